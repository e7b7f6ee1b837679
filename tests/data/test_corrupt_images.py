"""Images that cannot be decoded completely are found when read and named; training stops on
them or skips them (``data.on_corrupt``), and never trains on a half-decoded (grey) picture."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_config
from core.data import VOCDataset, build_dataset
from core.data.voc import load_rgb
from core.io import ImageReadError, cut_short


def _encoded(fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (120, 90), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=95) if fmt == "JPEG" else Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cut_short_finds_files_that_end_too_early(fmt):
    data = _encoded(fmt)
    assert not cut_short(data)
    assert not cut_short(data + b"\0\0\n")  # padding after the end marker
    assert not cut_short(data + b"some bytes a camera appended")  # decoded by PIL to decide
    for frac in (0.3, 0.7, 0.98):
        assert cut_short(data[: int(len(data) * frac)]), frac
    assert not cut_short(b"BM not a jpeg or png")  # other formats: their decoders fail by themselves


def test_load_rgb_refuses_a_truncated_jpeg_and_names_it(tmp_path: Path):
    data = _encoded("JPEG")
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    rgb = load_rgb(whole)
    reference = cv2.cvtColor(cv2.imread(str(whole), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                             cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgb, reference)  # same pixels as before for a sound file
    with pytest.raises(ImageReadError, match=r"cut\.jpg is truncated"):
        load_rgb(cut)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        load_rgb(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match=r"text\.jpg"):
        load_rgb(tmp_path / "text.jpg")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_training_stops_on_a_truncated_image_by_default(voc_root: Path, cfg: dict):
    _truncate(voc_root / "JPEGImages" / "2007_000002.jpg")
    ds = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"])
    assert ds.on_corrupt == "stop"
    ds[0]
    with pytest.raises(ImageReadError, match=r"2007_000002\.jpg is truncated.*data\.on_corrupt=skip"):
        ds[1]


def test_skip_trains_on_the_next_readable_image_instead(voc_root: Path, cfg: dict, capsys):
    _truncate(voc_root / "JPEGImages" / "2007_000002.jpg")
    full = {**cfg, "data": {**cfg["data"], "root": str(voc_root), "train_split": "train_aug",
                            "on_corrupt": "skip"}}
    ds = build_dataset(full, train=True)
    assert ds.on_corrupt == "skip" and ds.names[1] == "2007_000002"
    sample = ds[1]
    assert sample["name"] == "2007_000005"  # the next item, with its own label and augmentation
    replacement = ds[2]
    assert torch.equal(sample["image"], replacement["image"])
    assert torch.equal(sample["cls_label"], replacement["cls_label"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2007_000002.jpg is truncated" in err
    ds[1]
    assert capsys.readouterr().err == ""  # reported once
    # evaluation never skips: a metric over a silently different set would mislead
    val = build_dataset({**full, "data": {**full["data"], "val_split": "train"}}, train=False)
    with pytest.raises(ImageReadError, match="2007_000002"):
        val[1]


def test_skip_with_nothing_readable_is_a_dataset_error(voc_root: Path, cfg: dict):
    from core.data import DatasetError

    for path in (voc_root / "JPEGImages").glob("*.jpg"):
        _truncate(path)
    ds = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"])
    ds.on_corrupt = "skip"
    with pytest.raises(DatasetError, match="no image of split 'train' can be read"):
        ds[0]


def test_on_corrupt_is_a_config_value_with_the_safe_default():
    assert load_config()["data"]["on_corrupt"] == "stop"
    assert load_config(None, ["data.on_corrupt=skip"])["data"]["on_corrupt"] == "skip"
