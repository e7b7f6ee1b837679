"""VOC / COCO / image-folder datasets on tiny folders made in the test."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from core.data import (
    COCO_CLASSES,
    VOC_CLASSES,
    COCODataset,
    DatasetError,
    ImageFolder,
    VOCDataset,
    build_dataset,
    class_names,
)
from core.data.voc import (
    _RestrictedUnpickler,
    labels_from_mask,
    load_cls_labels,
    map_class_ids,
    read_name_list,
)
from core.io import ImageReadError, read_mask

from .conftest import save_jpeg, write_json, write_split


def expected_labels(mask_path: Path, num_fg: int) -> np.ndarray:
    return labels_from_mask(read_mask(mask_path), num_fg)


def test_voc_train_aug_uses_aug_masks_and_derives_labels(voc_root: Path, cfg: dict) -> None:
    ds = VOCDataset(voc_root, "train_aug", train=True, data_cfg=cfg["data"])
    assert len(ds) == 3 and ds.names[2] == "2007_000005" and ds.has_masks
    assert len(ds.class_names) == 21
    for i, name in enumerate(ds.names):
        sample = ds[i]
        assert set(sample) == {"image", "image_raw", "cls_label", "mask", "valid", "name"}
        assert sample["name"] == name
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == torch.int64
        assert sample["valid"].dtype == torch.bool
        assert sample["cls_label"].shape == (20,) and sample["cls_label"].dtype == torch.float32
        want = expected_labels(voc_root / "SegmentationClassAug" / f"{name}.png", 20)
        assert np.array_equal(sample["cls_label"].numpy(), want) and want.sum() >= 1


def test_voc_val_has_full_images_and_masks(voc_root: Path, cfg: dict) -> None:
    ds = VOCDataset(voc_root, "val", train=False, data_cfg=cfg["data"])
    sample = ds[0]
    mask = read_mask(voc_root / "SegmentationClass" / "2007_000003.png")
    assert sample["image"].shape == (3, *mask.shape) and sample["valid"].all()
    assert np.array_equal(sample["mask"].numpy(), mask)


def test_augmentation_is_reproducible_per_epoch(voc_root: Path, cfg: dict) -> None:
    ds = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"], seed=7)
    a = ds[1]["image"]
    assert torch.equal(a, ds[1]["image"])
    ds.set_epoch(1)
    b = ds[1]["image"]
    ds.set_epoch(0)
    assert torch.equal(a, ds[1]["image"]) and not torch.equal(a, b)
    other = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"], seed=8)
    assert not torch.equal(a, other[1]["image"])


def test_batches_collate(voc_root: Path, cfg: dict) -> None:
    ds = build_dataset({**cfg, "data": {**cfg["data"], "root": str(voc_root), "train_split": "train_aug"}})
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["cls_label"].shape == (3, 20)
    assert batch["mask"].shape == (3, 32, 32) and batch["name"] == ds.names


def test_labels_from_json_and_from_the_authors_npy(voc_root: Path, cfg: dict) -> None:
    write_json(voc_root / "cls_labels.json", {"2007_000001": [3], "2007_000002": [4, 20]})
    ds = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"])
    assert np.nonzero(ds[1]["cls_label"].numpy())[0].tolist() == [3, 19]
    (voc_root / "cls_labels.json").unlink()
    onehot = {"2007_000001": np.eye(20, dtype=np.uint8)[5], "2007_000002": np.eye(20, dtype=np.uint8)[0]}
    np.save(voc_root / "cls_labels_onehot.npy", onehot, allow_pickle=True)
    ds = VOCDataset(voc_root, "train", train=True, data_cfg=cfg["data"])
    assert np.nonzero(ds[0]["cls_label"].numpy())[0].tolist() == [5]


def test_training_without_masks_when_labels_exist(voc_root: Path, cfg: dict) -> None:
    shutil.rmtree(voc_root / "SegmentationClassAug")
    with pytest.raises(DatasetError, match="SegmentationClassAug"):
        VOCDataset(voc_root, "train_aug", train=True, data_cfg=cfg["data"])
    write_json(voc_root / "cls_labels.json", {n: [1] for n in ("2007_000001", "2007_000002", "2007_000005")})
    ds = VOCDataset(voc_root, "train_aug", train=True, data_cfg=cfg["data"])
    assert not ds.has_masks and "mask" not in ds[0]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_npy_labels_never_run_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "cls_labels.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"x": Evil()}
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)
    with pytest.raises(DatasetError, match="refusing"):
        load_cls_labels(path, 20)


def test_bad_json_labels(tmp_path: Path) -> None:
    write_json(tmp_path / "l.json", {"a": [0]})
    with pytest.raises(DatasetError, match="ids must be 1..20"):
        load_cls_labels(tmp_path / "l.json", 20)


def test_missing_split_file_names_it(voc_root: Path, cfg: dict) -> None:
    (voc_root / "ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(DatasetError, match=r"has no ImageSets/Segmentation/train_aug.txt; .*SBD"):
        VOCDataset(voc_root, "train_aug", train=True, data_cfg=cfg["data"])


def test_missing_root(tmp_path: Path, cfg: dict) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDataset(tmp_path / "nope", "val", train=False, data_cfg=cfg["data"])


def test_listed_images_without_files(voc_root: Path, cfg: dict) -> None:
    write_split(voc_root, "ImageSets/Segmentation/val.txt", ["2007_000003", "2008_000111", "2008_000222"])
    with pytest.raises(
        DatasetError, match=r"2 of 3 images .* missing from JPEGImages/ \(first: 2008_000111, 2008"
    ):
        VOCDataset(voc_root, "val", train=False, data_cfg=cfg["data"])


def test_missing_masks_for_evaluation(voc_root: Path, cfg: dict) -> None:
    (voc_root / "SegmentationClass" / "2007_000004.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 masks .* SegmentationClass/ \(first: 2007_000004\)"):
        VOCDataset(voc_root, "val", train=False, data_cfg=cfg["data"])


def test_mismatched_mask_size_is_reported(voc_root: Path, cfg: dict) -> None:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(voc_root / "SegmentationClass" / "2007_000003.png")
    ds = VOCDataset(voc_root, "val", train=False, data_cfg=cfg["data"])
    with pytest.raises(DatasetError, match="5x5"):
        ds[0]


def test_deeplab_style_list_lines(tmp_path: Path) -> None:
    p = tmp_path / "l.txt"
    p.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2007_000039\n")
    assert read_name_list(p) == ["2007_000032", "2007_000039"]


def test_coco_layout(coco_root: Path, cfg: dict) -> None:
    ds = COCODataset(coco_root, "train", train=True, data_cfg=cfg["data"])
    assert len(ds) == 2 and len(ds.class_names) == 81
    sample = ds[0]
    assert sample["cls_label"].shape == (80,)
    assert np.nonzero(sample["cls_label"].numpy())[0].tolist() == [0, 79]
    val = COCODataset(coco_root, "val", train=False, data_cfg=cfg["data"])
    assert val[0]["mask"].shape == (36, 48)
    assert np.nonzero(val[0]["cls_label"].numpy())[0].tolist() == [17, 61]


def test_coco_missing_list(coco_root: Path, cfg: dict) -> None:
    (coco_root / "ImageSets" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="ImageSets/Segmentation/val.txt"):
        COCODataset(coco_root, "val", train=False, data_cfg=cfg["data"])


def test_class_names_and_factory_checks(voc_root: Path, coco_root: Path, cfg: dict) -> None:
    assert class_names(cfg) == VOC_CLASSES and VOC_CLASSES[15] == "person"
    coco_cfg = {**cfg, "data": {**cfg["data"], "name": "coco", "root": str(coco_root)}}
    assert class_names(coco_cfg) == COCO_CLASSES and len(COCO_CLASSES) == 81
    assert len(set(COCO_CLASSES)) == 81
    with pytest.raises(DatasetError, match="num_classes is 21 but dataset coco has 81"):
        build_dataset(coco_cfg, "train", train=True)
    coco_cfg["model"] = {**cfg["model"], "num_classes": 81}
    assert len(build_dataset(coco_cfg, "val", train=False)) == 1
    voc_cfg = {**cfg, "data": {**cfg["data"], "root": str(voc_root)}}
    assert build_dataset(voc_cfg, train=False).split == "val"  # default: data.val_split
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset({**cfg, "data": {**cfg["data"], "name": "imagenet"}})


def test_image_folder(tmp_path: Path, cfg: dict) -> None:
    save_jpeg(tmp_path / "b.jpg", np.full((40, 50, 3), 100, np.uint8))
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((40, 40), 9, np.uint8)).save(tmp_path / "sub" / "a.png")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    folder = ImageFolder(tmp_path)
    assert folder.names == ["b", "broken", "sub/a"]
    item = folder[2]
    assert item["rgb"].shape == (40, 40, 3) and any("grayscale" in n for n in item["notes"])
    with pytest.raises(ImageReadError, match="broken.png"):
        folder[1]
    assert [r[1] is None for r in folder.read_all()] == [False, True, False]
    ds = build_dataset({**cfg, "data": {**cfg["data"], "name": "folder", "root": str(tmp_path)}}, train=False)
    assert ds[0]["image"].shape == (3, 40, 50) and ds[0]["valid"].all()
    with pytest.raises(DatasetError, match="cannot be used for training"):
        build_dataset({**cfg, "data": {**cfg["data"], "name": "folder", "root": str(tmp_path)}}, train=True)


def test_restricted_unpickler_refuses_other_globals() -> None:
    with pytest.raises(pickle.UnpicklingError):
        _RestrictedUnpickler(io.BytesIO(pickle.dumps(set))).load()


def test_map_class_ids_by_name() -> None:
    mask = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    out, unknown = map_class_ids(mask, ["background", "cat", "dog", "bird"], ["background", "dog", "cat"])
    assert out.tolist() == [[0, 2, 1], [255, 255, 2]] and unknown == ["bird"]
    same, none = map_class_ids(mask, ["bg", "a", "b", "c"], ["bg", "a", "b", "c"])
    assert np.array_equal(same, mask) and none == []
    with pytest.raises(ValueError):
        map_class_ids(mask, ["background", "cat"], ["background", "cat"])
