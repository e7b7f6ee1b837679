"""Rendering helpers, plots and the analysis cache."""

import json
import os
import time

import numpy as np
import pytest

from app import plots, render
from app.cache import LRUCache, analysis_key, checkpoint_fingerprint, image_digest, nbytes_of
from tests.app.helpers import make_analysis


def test_palette_voc_colours_background_black_ignore_white():
    pal = render.palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[255]) == (255, 255, 255)
    assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0) and tuple(pal[15]) == (192, 128, 128)
    assert len({tuple(c) for c in pal[:21]}) == 21


def test_labels_and_overlays():
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    label = np.zeros((20, 30), dtype=np.uint8)
    label[5:10, 5:10] = 1
    label[0, 0] = 255
    coloured = render.colorize_labels(label)
    assert tuple(coloured[6, 6]) == (128, 0, 0) and tuple(coloured[0, 0]) == (255, 255, 255)
    over = render.overlay_labels(image, label, 0.5)
    assert over.shape == image.shape and tuple(over[6, 6]) == (114, 50, 50)
    keep = render.overlay_labels(image, label, 1.0, show_background=False)
    assert tuple(keep[15, 15]) == (100, 100, 100)
    # a label map at another resolution is resized with nearest (ids stay ids)
    small = render.overlay_labels(image, label[::2, ::2], 1.0)
    assert set(map(tuple, small.reshape(-1, 3))) <= {(0, 0, 0), (128, 0, 0), (255, 255, 255)}


def test_heatmap_ranges_and_nan():
    values = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32)
    hot = render.heatmap(values)
    lut = render.colormap_lut("jet")
    assert tuple(hot[0, 0]) == tuple(lut[0]) and tuple(hot[1, 0]) == tuple(lut[255])
    auto = render.heatmap(values * 0.01, vmin=None, vmax=None)
    assert tuple(auto[1, 0]) == tuple(lut[255])
    flat = render.heatmap(np.ones((3, 3)), vmin=None, vmax=None)
    assert flat.shape == (3, 3, 3)


def test_fit_to_nearest_and_bilinear():
    grid = np.arange(6, dtype=np.float32).reshape(2, 3)
    near = render.fit_to(grid, (4, 6), "nearest")
    assert near.shape == (4, 6) and near[0, 0] == 0 and near[3, 5] == 5 and near[1, 1] == 0
    smooth = render.fit_to(grid, (4, 6), "bilinear")
    assert smooth.shape == (4, 6) and 0 < smooth[1, 2] < 5
    with pytest.raises(ValueError):
        render.fit_to(grid, (4, 6), "cubic")


def test_marker_token_box_grid_legend_placeholder():
    image = np.zeros((50, 60, 3), dtype=np.uint8)
    marked = render.draw_marker(image, (30, 25))
    assert marked.any() and not image.any()
    assert tuple(marked[25, 30 + 6]) == (255, 255, 255)  # the white cross arm (radius 4, arm 4..8)
    boxed = render.draw_token_box(image, (10, 10, 20, 20))
    assert boxed[10, 15].any() and not boxed[15, 15].any()
    tiles = [np.full((10, 12, 3), i * 40, dtype=np.uint8) for i in range(5)]
    grid = render.tile_grid(tiles, [f"h{i}" for i in range(5)], columns=3)
    assert grid.shape == (2 * (10 + 18 + 4) + 4, 3 * (12 + 4) + 4, 3)
    html = render.legend_html(["background", "cat <b>"], [0, 1, 255])
    assert "cat &lt;b&gt;" in html and "ignore" in html and "rgb(128,0,0)" in html
    assert render.placeholder("no model here", (40, 80)).shape == (40, 80, 3)
    assert "linear-gradient" in render.colourbar_html(0, 1)


def test_resize_long_side_never_enlarges():
    image = np.zeros((100, 50, 3), dtype=np.uint8)
    assert render.resize_long_side(image, 40).shape == (40, 20, 3)
    assert render.resize_long_side(image, 400).shape == (100, 50, 3)


def test_plots():
    fig = plots.scores_figure(["bg", "a", "b"], {"T": np.array([0.9, 0.2]), "C": np.array([0.4, 0.6])}, [1])
    assert len(fig.data) == 2 and fig.data[0].y[0] == "● a"
    curves = plots.training_figure(
        [
            {"kind": "train", "step": 1, "loss": 1.0, "loss_cls": 0.6, "pseudo_acc": 0.5},
            {"kind": "train", "step": 2, "loss": 0.8, "loss_cls": float("nan")},
            {"kind": "eval", "step": 2, "miou": {"seg": 0.31, "cam": 0.2}},
        ]
    )
    names = {t.name for t in curves.data}
    assert {"loss", "loss_cls", "mIoU seg", "mIoU cam", "pseudo acc"} <= names
    assert max(next(t for t in curves.data if t.name == "mIoU seg").y) == pytest.approx(31.0)
    assert plots.training_figure([]).layout.annotations


def test_lru_bounds_entries_and_bytes():
    cache = LRUCache(max_entries=3, max_bytes=1000, sizeof=lambda v: v)
    for key in "abc":
        cache.put(key, 100)
    cache.get("a")
    cache.put("d", 100)  # evicts b, the least recently used
    assert "b" not in cache and {"a", "c", "d"} == {k for k in "abcd" if k in cache}
    cache.put("big", 900)  # over budget: evict old entries until it fits
    assert "big" in cache and cache.total_bytes <= 1000
    cache.put("huge", 5000)  # alone over budget: still kept
    assert "huge" in cache and len(cache) == 1
    value, hit = cache.get_or_compute("x", lambda: 1)
    assert (value, hit) == (1, False) and cache.get_or_compute("x", lambda: 2) == (1, True)


def test_analysis_size_and_keys(tmp_path):
    analysis = make_analysis()
    assert nbytes_of(analysis) > analysis.cam.nbytes + analysis.affinity.nbytes
    image = analysis.image
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"1")
    key = analysis_key(image_digest(image), ckpt, None, False)
    assert key == analysis_key(image_digest(image.copy()), ckpt, None, False)
    assert key != analysis_key(image_digest(image[::-1]), ckpt, None, False)
    assert key != analysis_key(image_digest(image), ckpt, ("cat",), False)
    assert key != analysis_key(image_digest(image), ckpt, None, True)
    assert analysis_key("h", ckpt, ("b", "a"), False) == analysis_key("h", ckpt, ("a", "b"), False)
    before = checkpoint_fingerprint(ckpt)
    time.sleep(0.01)
    ckpt.write_bytes(b"22")
    os.utime(ckpt, None)
    assert checkpoint_fingerprint(ckpt) != before  # a retrained checkpoint never hits a stale entry
    assert checkpoint_fingerprint(tmp_path / "gone").endswith("missing")


def test_concurrent_misses_compute_once():
    import threading

    cache = LRUCache(max_entries=4, sizeof=lambda v: 1)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return "value"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True, True, True]


def test_picker_label_names_the_headline_miou(tmp_path):
    from app.backend import describe_checkpoint

    metrics = {"miou": {"cam_label": 0.41, "par_label": 0.49, "seg_label": 0.196}}
    afa = describe_checkpoint(
        tmp_path / "afa_x.safetensors", {"model": {"backbone": "mit_b0"}, "metrics": metrics}
    )
    # the segmentation's, not the first; from the checkpoint's own evaluation during training
    assert afa.label == "afa_x · mit_b0 · mIoU 19.6 (seg_label, training evaluation)"
    cnn_metrics = {"miou": {"cam_label": 0.41, "par_label": 0.63}}
    cnn = describe_checkpoint(
        tmp_path / "run" / "checkpoint.safetensors", {"model": {}, "metrics": cnn_metrics}
    )
    # a CAM-only model: its best pseudo label
    assert cnn.label == "run · ? · mIoU 63.0 (par_label, training evaluation) · run"
    # a published evaluation beside the file (NAME.eval.json, the whole split) wins over it
    summary = {"n_images": 300, "split": "val",
               "stages": {"cam_label": {"miou": 0.47}, "seg_label": {"miou": 0.396}}}
    (tmp_path / "afa_x.eval.json").write_text(json.dumps(summary))
    afa = describe_checkpoint(
        tmp_path / "afa_x.safetensors", {"model": {"backbone": "mit_b0"}, "metrics": metrics}
    )
    assert afa.label == "afa_x · mit_b0 · mIoU 39.6 (seg_label, 300 val images)"
    (tmp_path / "afa_x.eval.json").write_text("{not json")  # unreadable: the checkpoint's own again
    assert describe_checkpoint(
        tmp_path / "afa_x.safetensors", {"model": {"backbone": "mit_b0"}, "metrics": metrics}
    ).label.endswith("(seg_label, training evaluation)")


def test_discovery_lists_models_not_encoder_weights(tmp_path, monkeypatch):
    import torch

    from app.backend import CoreBackend
    from core.checkpoint import save_checkpoint

    meta = {
        "model": {"name": "afa", "backbone": "mit_b0", "num_classes": 3},
        "classes": ["background", "a", "b"],
    }
    save_checkpoint(tmp_path / "model.safetensors", {"w": torch.zeros(1)}, meta)
    save_checkpoint(
        tmp_path / "encoder.safetensors", {"w": torch.zeros(1)}, {**meta, "data": {"encoder_only": True}}
    )
    (tmp_path / "broken.safetensors").write_bytes(b"junk")
    monkeypatch.setenv("AFA_APP_CHECKPOINT_DIRS", str(tmp_path))
    found = CoreBackend().discover(include_runs=False)
    assert [info.path.name for info in found] == ["model.safetensors"]
