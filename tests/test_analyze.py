import numpy as np
import pytest
import torch

import core
from core.config import load_config
from core.errors import UserError
from core.method.crf import crf_available
from core.models.registry import create_model

CLASSES = ["background", "shirt", "bag", "shoe"]


def make_model(kind="afa"):
    torch.manual_seed(0)
    if kind == "afa":
        cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=4"])
    else:
        cfg = load_config(
            None, ["model.name=cnn_cam", "model.backbone=resnet18", "train.mode=cam", "model.num_classes=4"]
        )
    return create_model(cfg, classes=CLASSES).eval()


@pytest.fixture(scope="module")
def afa():
    return make_model("afa")


def image(h=70, w=50, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[10:40, 10:30] = (200, 60, 60)
    return (img + rng.integers(0, 20, img.shape)).astype(np.uint8)


def test_every_field_at_image_resolution(afa):
    a = core.analyze(afa, image(), labels=["shirt", "shoe"], crf=True)
    h, w = 70, 50
    assert a.classes == CLASSES and list(a.present) == [1, 3] and a.labels_source == "given"
    assert a.scores.shape == (3,) and ((a.scores > 0) & (a.scores < 1)).all()
    assert a.cam.shape == (3, h, w) and a.cam.min() >= 0 and a.cam.max() <= 1 + 1e-6
    assert np.all(a.cam[1] == 0)  # "bag" is not in the labels
    for name in ("cam_label", "par_label", "rw_afa_label", "rw_mhsa_label", "seg_label", "seg_crf_label"):
        lab = getattr(a, name)
        assert lab.shape == (h, w) and lab.dtype == np.uint8, name
    allowed = {0, 1, 3, 255}
    for name in ("cam_label", "par_label", "rw_afa_label", "rw_mhsa_label"):
        assert set(np.unique(getattr(a, name))) <= allowed, name
    assert a.par_steps.shape == (11, 3, h, w) and list(a.par_channels) == [0, 1, 3]
    gh, gw = a.grid
    n = gh * gw
    assert a.affinity.shape == (n, n) and a.mhsa.shape == (n, n)
    assert np.allclose(a.mhsa, a.mhsa.T, atol=1e-6) and np.allclose(a.affinity, a.affinity.T, atol=1e-6)
    # the propagation grid is the one of the largest CAM scale (1.5): the 105 x 75 image through
    # MiT's padded stride-4, 2, 2 patch embeddings: ceil(105/4/2/2) x ceil(75/4/2/2)
    assert (gh, gw) == (7, 5)
    assert len(a.attention) == 8
    for blk in a.attention:
        heads, nq, nk = blk.attn.shape
        assert nq == blk.grid[0] * blk.grid[1] and nk == blk.kv_grid[0] * blk.kv_grid[1]
        assert np.allclose(blk.attn.astype(np.float32).sum(-1), 1, atol=1e-2)
    assert [blk.attn.shape[0] for blk in a.attention] == [1, 1, 2, 2, 5, 5, 8, 8]
    assert a.seg_probs.shape == (4, h, w)


def test_precision_and_seg_merge_settings(afa):
    exact = core.analyze(afa, image(), labels=["shirt"], precision="fp32", attention=False)
    fast = core.analyze(afa, image(), labels=["shirt"], precision="bf16", attention=False)
    assert exact.meta["precision"] == "fp32" and fast.meta["precision"] == "bf16"
    assert exact.meta["seg_merge"] == "max"  # the authors' test-script merge is the default
    # bf16 passes: the same maps up to bf16 rounding (an untrained model, so no agreement target)
    assert np.abs(exact.cam - fast.cam).max() < 0.1
    mean = core.analyze(afa, image(), labels=["shirt"], precision="fp32", seg_merge="mean", attention=False)
    assert mean.meta["seg_merge"] == "mean"
    assert np.array_equal(mean.cam_label, exact.cam_label)  # the merge touches the segmentation only
    assert not np.allclose(mean.seg_probs.astype(np.float32), exact.seg_probs.astype(np.float32))


def test_cam_scales_are_the_checkpoints_own(afa):
    afa.meta = {"config": {"cam": {"scales": [1.0, 0.75]}}}
    try:
        own = core.analyze(afa, image())
        assert own.meta["scales"] == [1.0, 0.75]
        assert core.analyze(afa, image(), scales=(1.0, 0.5, 1.5)).meta["scales"] == [1.0, 0.5, 1.5]
    finally:
        afa.meta = {}
    assert core.analyze(afa, image()).meta["scales"] == [1.0, 0.5, 1.5]  # no config: the paper's


def test_predicted_labels_and_any_size(afa):
    for h, w in [(33, 33), (17, 200), (129, 97)]:
        a = core.analyze(afa, image(h, w), scales=(1.0, 0.5))
        assert a.labels_source == "predicted" and len(a.present) >= 1
        assert a.cam_label.shape == (h, w) and a.seg_label.shape == (h, w)
        assert a.par_steps.shape[-2:] == (h, w)
        assert a.seg_crf_label is None


def test_labels_are_checked(afa):
    with pytest.raises(UserError, match="unknown class 'cat'"):
        core.analyze(afa, image(), labels=["cat"])
    with pytest.raises(ValueError, match="scales"):
        core.analyze(afa, image(), scales=())


def test_odd_inputs_go_through_the_robust_reader(afa):
    gray = image()[..., 0]
    a = core.analyze(afa, gray, labels=["bag"])
    assert a.image.shape == (70, 50, 3) and list(a.present) == [2]


def test_cnn_model_returns_none_where_it_cannot_compute():
    a = core.analyze(make_model("cnn"), image(), labels=["shirt"])
    assert a.cam.shape == (3, 70, 50) and a.cam_label is not None and a.par_label is not None
    for name in (
        "affinity",
        "mhsa",
        "grid",
        "rw_afa_label",
        "rw_mhsa_label",
        "attention",
        "seg_label",
        "seg_crf_label",
    ):
        assert getattr(a, name) is None, name


def test_same_image_same_answer(afa):
    a = core.analyze(afa, image(), labels=["shirt"])
    b = core.analyze(afa, image(), labels=["shirt"])
    assert np.array_equal(a.par_label, b.par_label) and np.array_equal(a.rw_afa_label, b.rw_afa_label)


def test_crf_afterwards_equals_crf_in_the_analysis(afa):
    plain = core.analyze(afa, image(), labels=["shirt"], scales=(1.0,))
    assert plain.seg_crf_label is None
    later = core.add_crf(plain)
    direct = core.analyze(afa, image(), labels=["shirt"], scales=(1.0,), crf=True)
    assert np.array_equal(later.seg_crf_label, direct.seg_crf_label)
    assert later.seg_crf_label.shape == (70, 50) and plain.seg_crf_label is None  # the input is untouched


def test_dense_labels_fill_the_ignore_band_consistently(afa):
    # The training label is background where even the low background score (0.35) wins, foreground
    # where the high one (0.55) loses, and 255 in between. The dense label uses one score 0.45 in
    # between; softmax, PAR (a positive average) and the upsampling are all monotone in the
    # background score, so it must agree on both sides of the band and label every pixel.
    img = image(64, 64, seed=3)
    train = core.analyze(afa, img, labels=["shirt", "shoe"], attention=False)
    dense = core.analyze(afa, img, labels=["shirt", "shoe"], attention=False, dense=True)
    assert np.array_equal(train.cam_label, dense.cam_label)
    band = 0
    for name in ("par_label", "rw_afa_label", "rw_mhsa_label"):
        t, d = getattr(train, name), getattr(dense, name)
        assert 255 not in d and set(np.unique(d)) <= {0, 1, 3}, name
        assert np.all(d[t == 0] == 0), name
        assert np.all(d[(t != 0) & (t != 255)] != 0), name
        band += int((t == 255).sum())
    assert band > 0  # the random model leaves an ignore band, so the case is not vacuous


@pytest.mark.skipif(not crf_available(), reason="pydensecrf is not installed")
def test_crf_changes_the_segmentation_of_a_shipped_example():
    from pathlib import Path

    from core.io import read_image

    repo = Path(__file__).resolve().parents[1]
    model = core.load_model(repo / "checkpoints" / "afa_mit_b0_scenes.safetensors", device="cpu")
    example = sorted((repo / "assets" / "examples").glob("*.jpg"))[0]  # the app's first example
    rgb, _ = read_image(example, 512)
    assert not rgb.flags.writeable  # what the app passes: the case that used to fail
    plain = core.analyze(model, rgb, attention=False)
    refined = core.analyze(model, rgb, attention=False, crf=True)
    assert np.array_equal(plain.seg_label, refined.seg_label)
    changed = (refined.seg_crf_label != refined.seg_label).mean()
    assert 0.0 < changed < 0.5  # the CRF moves boundaries; it does not relabel the picture
    # only classes the segmentation found (the CRF refines, it does not invent)
    assert set(np.unique(refined.seg_crf_label)) <= set(np.unique(refined.seg_label))


def test_every_shipped_example_is_recognised_exactly_and_its_objects_covered():
    """What the app's examples promise: on each, the shipped AFA model predicts exactly the classes
    of its mask (sigmoid score > 0.5, no other), and the AFA-propagated label (scored as
    core.evaluate scores it: one background score) covers each object (IoU >= 0.8 per class)."""
    import json
    from pathlib import Path

    from PIL import Image

    from core.io import read_image

    repo = Path(__file__).resolve().parents[1]
    model = core.load_model(repo / "checkpoints" / "afa_mit_b0_scenes.safetensors", device="cpu")
    examples = sorted((repo / "assets" / "examples").glob("*.json"))
    assert len(examples) >= 3
    for path in examples:
        info = json.loads(path.read_text())
        rgb, _ = read_image(path.with_name(info["image"]), 512)
        mask = np.array(Image.open(path.with_name(info["mask"])))  # palette PNG: class ids
        assert mask.shape == rgb.shape[:2]
        a = core.analyze(model, rgb, attention=False, dense=True)
        predicted = [model.classes[c + 1] for c in np.flatnonzero(a.scores > 0.5)]
        assert sorted(predicted) == sorted(info["labels"]), path.name
        for name in info["labels"]:
            c = model.classes.index(name)
            valid = mask != 255
            pred, true = (a.rw_afa_label == c) & valid, (mask == c) & valid
            iou = (pred & true).sum() / (pred | true).sum()
            assert iou >= 0.8, f"{path.name}: {name} IoU {iou:.2f}"


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 37, 3), (23, 1, 3)])
def test_one_pixel_sides_work_at_their_own_size(afa, shape):
    a = core.analyze(afa, np.full(shape, 90, np.uint8), crf=crf_available())
    assert a.cam_label.shape == shape[:2] and a.seg_label.shape == shape[:2]
    assert a.par_label.shape == shape[:2] and a.rw_afa_label.shape == shape[:2]


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 12, 3), (12, 0, 3)])
def test_empty_arrays_are_a_user_error(afa, shape):
    from core.io import ImageReadError

    with pytest.raises(ImageReadError, match="zero size"):
        core.analyze(afa, np.zeros(shape, np.uint8))


def test_dense_settings_collapse_the_band_on_a_copy():
    from core.analyze import dense_settings

    cfg = load_config(None, ["cam.bg_thresh=0.3", "cam.high_thresh=0.4", "cam.low_thresh=0.2"])
    dense = dense_settings(cfg)
    assert dense["cam"]["high_thresh"] == dense["cam"]["low_thresh"] == dense["cam"]["bg_thresh"] == 0.3
    assert (cfg["cam"]["high_thresh"], cfg["cam"]["low_thresh"]) == (0.4, 0.2)  # the caller's settings kept
