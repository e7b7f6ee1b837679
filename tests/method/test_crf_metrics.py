"""Tests of core.method.crf (pydensecrf wrapper) and core.method.metrics."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from core.method import crf
from core.method.metrics import ConfusionMatrix, error_map, multilabel_f1

IGN = 255

# ---------------------------------------------------------------- dense CRF


def _two_region_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = 24, 32
    truth = np.zeros((h, w), dtype=np.uint8)
    truth[:, w // 2 :] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    image = np.clip(image.astype(int) + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)
    fg = 0.5 + np.where(truth == 1, 0.1, -0.1) + rng.normal(0.0, 0.25, (h, w))
    fg = np.clip(fg, 0.02, 0.98)
    probs = np.stack([1.0 - fg, fg]).astype(np.float64)  # float64 on purpose: the wrapper converts
    return image, probs, truth


@pytest.mark.skipif(not crf.crf_available(), reason="pydensecrf is not installed")
def test_dense_crf_cleans_noisy_probabilities():
    image, probs, truth = _two_region_case()
    argmax_acc = (probs.argmax(0) == truth).mean()
    label = crf.dense_crf(image, probs)
    assert label.shape == truth.shape and label.dtype == np.uint8
    crf_acc = (label == truth).mean()
    assert argmax_acc < 0.85
    assert crf_acc > 0.97 and crf_acc > argmax_acc


@pytest.mark.skipif(not crf.crf_available(), reason="pydensecrf is not installed")
def test_dense_crf_accepts_views_and_tensors():
    image, probs, truth = _two_region_case(1)
    flipped = crf.dense_crf(image[:, ::-1], probs[:, :, ::-1], iters=5)  # non-contiguous views
    as_tensors = crf.dense_crf(
        torch.from_numpy(image[:, ::-1].copy()), torch.from_numpy(probs[:, :, ::-1].copy()), iters=5
    )
    assert np.array_equal(flipped, as_tensors)
    assert (flipped == truth[:, ::-1]).mean() > 0.97


def test_dense_crf_rejects_mismatched_shapes():
    if not crf.crf_available():
        pytest.skip("pydensecrf is not installed")
    with pytest.raises(ValueError):
        crf.dense_crf(np.zeros((4, 5, 3), np.uint8), np.ones((2, 5, 4)) / 2)


def test_missing_pydensecrf_gives_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert crf.crf_available() is False
    with pytest.raises(RuntimeError, match="dense CRF needs the pydensecrf module: pip install pydensecrf2"):
        crf.dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5))


# ---------------------------------------------------------------- confusion matrix


GT = np.array([[0, 0, 1], [1, 2, IGN]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])
# counted pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the last pixel is ignored


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3).update(PRED, GT)
    assert np.array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    # IoU = TP / (row + column - TP): 1 / (2 + 2 - 1), 2 / (2 + 3 - 2), 0 / (1 + 0 - 0)
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_confusion_matrix_nan_for_absent_classes_and_torch_input():
    cm = ConfusionMatrix(4).update(torch.from_numpy(PRED), torch.from_numpy(GT))
    iou = cm.iou()
    assert np.isnan(iou[3]) and np.isfinite(iou[:3]).all()
    assert cm.miou() == pytest.approx(1 / 3)  # nanmean over the 3 classes that occur
    d = cm.as_dict(["bg", "a", "b", "c"])
    assert d["miou"] == pytest.approx(1 / 3)
    assert d["per_class"]["a"] == pytest.approx(2 / 3) and d["per_class"]["c"] is None
    assert np.isnan(ConfusionMatrix(2).miou()) and np.isnan(ConfusionMatrix(2).pixel_accuracy())


def test_confusion_matrix_predicted_only_class_has_zero_iou():
    cm = ConfusionMatrix(3).update(np.array([2, 0]), np.array([0, 0]))
    np.testing.assert_allclose(cm.iou(), [0.5, np.nan, 0.0])


def test_confusion_matrix_ignore_in_prediction():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, IGN, 1, 1])
    counted = ConfusionMatrix(2).update(pred, gt)  # the 255 prediction is an error for class 0
    np.testing.assert_allclose(counted.iou(), [0.5, 1.0])
    assert counted.pixel_accuracy() == pytest.approx(0.75)
    skipped = ConfusionMatrix(2).update(pred, gt, skip_pred_ignore=True)
    np.testing.assert_allclose(skipped.iou(), [1.0, 1.0])


def test_confusion_matrix_rejects_bad_ground_truth():
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.array([0, 1, 2]), np.array([0, 1]))


def test_confusion_matrix_merge_and_add_equal_one_update():
    whole = ConfusionMatrix(3).update(PRED, GT)
    top = ConfusionMatrix(3).update(PRED[0], GT[0])
    bottom = ConfusionMatrix(3).update(PRED[1], GT[1])
    added = top + bottom
    assert np.array_equal(added.matrix, whole.matrix)
    assert np.array_equal(top.matrix, ConfusionMatrix(3).update(PRED[0], GT[0]).matrix)  # + is pure
    top.merge(bottom)
    assert np.array_equal(top.matrix, whole.matrix)
    with pytest.raises(ValueError):
        top.merge(ConfusionMatrix(4))


def test_confusion_matrix_all_reduce(tmp_path):
    import torch.distributed as dist

    cm = ConfusionMatrix(3).update(PRED, GT)
    before = cm.matrix.copy()
    assert cm.all_reduce() is cm  # not initialised: no-op
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo backend not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm.all_reduce()
    finally:
        dist.destroy_process_group()
    assert np.array_equal(cm.matrix, before)


def test_error_map_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = np.array([[0, 1, 1, 0], [2, 1, 0, 255]])
    # correct, FP (fg on bg), correct, FN (fg as bg) / correct, wrong class, ignored, unlabelled
    expected = np.array([[0, 1, 0, 2], [0, 3, 255, 4]], dtype=np.uint8)
    assert np.array_equal(error_map(pred, gt), expected)
    # every flagged pixel is an off-diagonal count of the confusion matrix
    cm = ConfusionMatrix(3).update(pred, gt)
    flagged = np.isin(error_map(pred, gt), [1, 2, 3, 4]).sum()
    assert flagged == cm.matrix.sum() - np.trace(cm.matrix) + cm.unpredicted.sum()
    with pytest.raises(ValueError):
        error_map(pred[:, :2], gt)


def test_error_counts_match_the_error_map_pixel_by_pixel():
    # the matrix's counts per kind equal the painted map's, on random labels with ignore on both sides
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 4, (3, 40, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 4, gt.shape)
    pred[rng.random(gt.shape) < 0.1] = 255
    cm = ConfusionMatrix(4)
    for p, g in zip(pred, gt):  # three images, summed
        cm.update(p, g)
    painted = np.bincount(error_map(pred, gt).ravel(), minlength=256)
    assert cm.error_counts() == {k: int(painted[k]) for k in range(5)}
    assert min(cm.error_counts().values()) > 0  # every kind occurs: the comparison is not vacuous


def test_error_shares_are_counted_against_the_pixels_each_kind_can_occur_in():
    # classes background, a, b: true background 16 pixels (2 labelled a); true items 19 (a: 4 given
    # classes, 1 of them background and 1 b, plus 5 given no class; b: 10, 3 of them background)
    cm = ConfusionMatrix.from_counts([[14, 2, 0], [1, 2, 1], [3, 0, 7]], [0, 5, 0])
    shares = cm.error_shares()
    assert shares == pytest.approx({"false positive": 2 / 16, "false negative": 4 / 19,
                                    "wrong class": 1 / 19, "unlabelled": 5 / 35})
    assert cm.as_dict()["errors"] == shares
    # no background in the truth: its share is undefined, not 0; an empty matrix has none at all
    assert ConfusionMatrix.from_counts([[0, 0], [1, 3]]).error_shares()["false positive"] is None
    assert set(ConfusionMatrix(3).error_shares().values()) == {None}


def test_class_shares_split_each_true_class_and_compare_areas():
    # the matrix above: true background 16 (14 / 2 / 0), a 9 (1 / 2 / 1 and 5 unpredicted), b 10 (3 / 0 / 7);
    # a class absent from the truth (d) has an undefined row and area, even when it is predicted
    cm = ConfusionMatrix.from_counts([[14, 2, 0, 0], [1, 2, 1, 0], [3, 0, 7, 0], [0, 0, 0, 0]], [0, 5, 0, 0])
    cm.matrix[0, 3] = 4  # 4 background pixels predicted as d: background now 20
    shares, area = cm.class_shares()
    assert shares.shape == (4, 5) and area.shape == (4,)
    np.testing.assert_allclose(shares[0], [14 / 20, 2 / 20, 0, 4 / 20, 0])
    np.testing.assert_allclose(shares[1], [1 / 9, 2 / 9, 1 / 9, 0, 5 / 9])
    np.testing.assert_allclose(shares[2], [3 / 10, 0, 7 / 10, 0, 0])
    np.testing.assert_allclose(np.nansum(shares, 1), [1, 1, 1, 0])
    assert np.isnan(shares[3]).all() and np.isnan(area[3])
    np.testing.assert_allclose(area[:3], [18 / 20, 4 / 9, 8 / 10])  # predicted / true pixels


def test_multilabel_f1_per_image_mean():
    pred = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    target = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    # image 1: TP 1, FP 1, FN 1 -> 0.5; image 2: nothing anywhere -> empty_score; image 3: 0
    assert multilabel_f1(pred, target) == pytest.approx(0.5)
    assert multilabel_f1(pred, target, empty_score=0.0) == pytest.approx(0.5 / 3)
    assert multilabel_f1(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 1.0
    assert multilabel_f1(np.array([[0, 1]]), np.array([[0, 0]])) == 0.0


@pytest.mark.skipif(not crf.crf_available(), reason="pydensecrf is not installed")
def test_dense_crf_takes_read_only_images():
    # core.io.read_image returns read-only arrays; pydensecrf needs a writable buffer
    image, probs, truth = _two_region_case(2)
    image.flags.writeable = False
    label = crf.dense_crf(image, probs, iters=5)
    assert (label == truth).mean() > 0.97 and not image.flags.writeable
