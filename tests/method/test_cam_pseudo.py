"""CAM helpers (core/method/cam.py) and pseudo labels with PAR (core/method/pseudo.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.cam import (
    allowed_channels,
    cam_to_label,
    cam_to_three_way_label,
    combine_multiscale_cams,
    gate_cam,
    max_with_flip,
    normalize_cam,
    scores_with_background,
)
from core.method.par import refine_with_par
from core.method.pseudo import (
    combine_two_background_labels,
    labels_from_background_runs,
    refine_label_two_backgrounds,
)

IGN = 255


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --- hand-made 2x3 CAM: 3 classes, class 2 absent (and everywhere highest, so it must never win) ---

@pytest.fixture
def cam23() -> tuple[Tensor, Tensor]:
    c1 = [[0.90, 0.50, 0.30], [0.20, 0.10, 0.30]]
    c2 = [[1.00, 1.00, 1.00], [1.00, 1.00, 1.00]]
    c3 = [[0.10, 0.45, 0.00], [0.60, 0.45, 0.55]]
    return torch.tensor([[c1, c2, c3]]), torch.tensor([[1.0, 0.0, 1.0]])


def test_cam_to_label_thresholds_absent_classes_and_valid(cam23: tuple[Tensor, Tensor]) -> None:
    cam, cls = cam23
    # max present values: 0.9 (1), 0.5 (1), 0.3 (1) / 0.6 (3), 0.45 (3, <= 0.45 is background), 0.55 (3)
    expected = torch.tensor([[[1, 1, 0], [3, 0, 3]]])
    assert torch.equal(cam_to_label(cam, cls, bg_thresh=0.45), expected)
    valid = torch.tensor([[[True, True, True], [False, True, True]]])
    expected_valid = torch.tensor([[[1, 1, 0], [IGN, 0, 3]]])
    assert torch.equal(cam_to_label(cam, cls, 0.45, valid=valid, ignore_index=IGN), expected_valid)
    # no class present: everything is background
    assert torch.equal(cam_to_label(cam, torch.zeros(1, 3)), torch.zeros(1, 2, 3, dtype=torch.long))


def test_cam_to_three_way_label(cam23: tuple[Tensor, Tensor]) -> None:
    cam, cls = cam23
    # > 0.55 class; (0.35, 0.55] ignore; <= 0.35 background
    expected = torch.tensor([[[1, IGN, 0], [3, IGN, IGN]]])
    assert torch.equal(cam_to_three_way_label(cam, cls, high=0.55, low=0.35), expected)
    valid = torch.tensor([[[True, True, False], [False, True, True]]])
    expected_valid = torch.tensor([[[1, IGN, IGN], [IGN, IGN, IGN]]])
    assert torch.equal(cam_to_three_way_label(cam, cls, 0.55, 0.35, valid=valid), expected_valid)
    assert cam_to_three_way_label(cam, cls).dtype == torch.long


def test_gate_cam(cam23: tuple[Tensor, Tensor]) -> None:
    cam, cls = cam23
    gated = gate_cam(cam, cls)
    assert torch.equal(gated[:, 1], torch.zeros(1, 2, 3))
    assert torch.equal(gated[:, [0, 2]], cam[:, [0, 2]])


def test_normalize_cam() -> None:
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 5, 7, generator=gen) * 7 - 2
    cam[1, 2] = 0.0
    cam[0, 1] = 3.0  # constant non-zero: becomes 0 too
    out = normalize_cam(cam, eps=1e-5)
    flat = out.flatten(2)
    for b, k in [(0, 0), (0, 2), (1, 0), (1, 1)]:
        assert flat[b, k].min() == 0.0
        assert flat[b, k].max() == pytest.approx(1.0, abs=1e-5)
        assert flat[b, k].max() < 1.0
    assert torch.equal(out[1, 2], torch.zeros(5, 7))
    assert torch.equal(out[0, 1], torch.zeros(5, 7))


def test_max_with_flip_and_combine_multiscale() -> None:
    gen = torch.Generator().manual_seed(1)
    pair = torch.randn(4, 2, 3, 5, generator=gen)
    merged = max_with_flip(pair, 2)
    assert torch.equal(merged, torch.maximum(pair[:2], pair[2:].flip(-1)))
    assert torch.equal(max_with_flip(pair), merged)
    with pytest.raises(ValueError):
        max_with_flip(pair, 3)
    small = torch.randn(4, 2, 2, 3, generator=gen)
    # already merged: resize, relu, sum
    combined = combine_multiscale_cams([merged, max_with_flip(small)], (6, 10))
    up = [_resize(c, (6, 10)) for c in (merged, max_with_flip(small))]
    torch.testing.assert_close(combined, F.relu(up[0]) + F.relu(up[1]))
    # raw pairs: resize first, then max with flip, then relu (the spec's order)
    combined = combine_multiscale_cams([pair, small], (6, 10), with_flip=True)
    up = [max_with_flip(_resize(c, (6, 10))) for c in (pair, small)]
    torch.testing.assert_close(combined, F.relu(up[0]) + F.relu(up[1]))
    assert (combined >= 0).all()


# --- two backgrounds -------------------------------------------------------------------------------

def test_combine_two_background_labels_table() -> None:
    #                      fg/any  bg/bg  bg/fg  bg/ign  ign/bg  fg/bg
    high = torch.tensor([[[2, 0, 0, 0, IGN, 1]]])
    low = torch.tensor([[[1, 0, 3, IGN, 0, 0]]])
    expected = torch.tensor([[[2, 0, IGN, IGN, IGN, 1]]])
    assert torch.equal(combine_two_background_labels(high, low, IGN), expected)


def test_scores_with_background() -> None:
    cam = torch.tensor([[[[0.9]], [[5.0]], [[0.2]]]])  # (1, 3, 1, 1), class 2 absent
    cls = torch.tensor([[1.0, 0.0, 1.0]])
    probs = scores_with_background(cam, cls, 0.55)
    assert probs.shape == (1, 4, 1, 1)
    assert probs[0, 2].item() == 0.0
    expected = torch.tensor([0.55, 0.9, 0.2]).softmax(0)
    torch.testing.assert_close(probs[0, [0, 1, 3], 0, 0], expected)
    assert torch.equal(allowed_channels(cls), torch.tensor([[True, True, False, True]]))


def _squares(size: int = 96, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A noisy green image with a red square (class 1) and a blue square (class 3), the true
    label, and a blurry CAM (the true masks pooled to a stride-16 grid and upsampled)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.tensor([60.0, 130.0, 70.0]).view(1, 3, 1, 1).repeat(1, 1, size, size)
    gt = torch.zeros(1, size, size, dtype=torch.long)
    boxes = {1: (16, 48, 12, 44, (200.0, 40.0, 40.0)), 3: (50, 86, 52, 88, (40.0, 60.0, 210.0))}
    cam = torch.zeros(1, 3, size, size)
    for k, (y0, y1, x0, x1, colour) in boxes.items():
        gt[0, y0:y1, x0:x1] = k
        image[0, :, y0:y1, x0:x1] = torch.tensor(colour).view(3, 1, 1)
        coarse = F.avg_pool2d((gt == k).float()[:, None], 16)
        cam[:, k - 1:k] = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    image = (image + torch.randn(image.shape, generator=gen) * 8).clamp(0, 255)
    return image, normalize_cam(cam), torch.tensor([[1.0, 0.0, 1.0]]), gt


def _iou(pred: Tensor, gt: Tensor, k: int) -> float:
    a, b = pred == k, gt == k
    return float((a & b).sum() / (a | b).sum())


def test_refined_label_follows_square_edges_better_than_raw_cam() -> None:
    image, cam, cls, gt = _squares()
    raw = cam_to_label(cam, cls, 0.45)
    refined = refine_label_two_backgrounds(image, cam, cls)
    assert refined.shape == gt.shape and refined.dtype == torch.long
    assert set(refined.unique().tolist()) <= {0, 1, 3, IGN}
    for k in (1, 3):
        raw_iou, ref_iou = _iou(raw, gt, k), _iou(refined, gt, k)
        assert ref_iou > raw_iou + 0.05, (k, raw_iou, ref_iou)
        assert ref_iou > 0.85
    # background far from the squares is background, not ignore
    assert (refined[0, :8, :] == 0).all()


def test_propagated_label_follows_square_edges() -> None:
    image, cam, cls, gt = _squares()
    grid = F.interpolate(cam, size=(6, 6), mode="bilinear", align_corners=False)
    probs_high = scores_with_background(grid, cls, 0.55)
    probs_low = scores_with_background(grid, cls, 0.35)
    probs_high[:, 2] = 10.0  # an absent class must never win, whatever its score
    label = labels_from_background_runs(image, probs_high, probs_low, cls)
    raw = F.interpolate(probs_high, size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, [0, 1, 3]]
    raw = torch.tensor([0, 1, 3])[raw.argmax(1)]
    assert not (label == 2).any()
    for k in (1, 3):
        assert _iou(label, gt, k) > _iou(raw, gt, k) + 0.05


def _reference_two_backgrounds(image: Tensor, cam: Tensor, cls: Tensor, high: float, low: float) -> Tensor:
    """Per image, without channel compaction tricks: [bg, present classes], softmax, PAR at half
    resolution, upsample, argmax, back to class ids, combine."""
    out = []
    for i in range(image.shape[0]):
        h, w = image.shape[-2:]
        small = F.interpolate(image[i:i + 1], size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(cls[i])[:, 0] + 1])
        cam_small = F.interpolate(cam[i:i + 1], size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        labels = []
        for bg in (high, low):
            stack = torch.cat([torch.full_like(cam_small[:, :1], bg), cam_small], dim=1)[:, keys].softmax(1)
            refined = _resize(refine_with_par(small, stack), (h, w))
            labels.append(keys[refined.argmax(1)])
        out.append(combine_two_background_labels(labels[0], labels[1], IGN))
    return torch.cat(out)


def test_batch_with_different_classes_matches_per_image_reference() -> None:
    image, cam, _, _ = _squares(64, seed=1)
    gen = torch.Generator().manual_seed(2)
    images = torch.cat([image, image.flip(-1)])
    cams = torch.cat([cam, torch.rand(1, 3, 64, 64, generator=gen)])
    cls = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 3 vs 2 allowed channels: padding used
    label, steps = refine_label_two_backgrounds(images, cams, cls, return_steps=True)
    assert torch.equal(label, _reference_two_backgrounds(images, cams, cls, 0.55, 0.35))
    assert steps.shape == (11, 2, 3, 32, 32)
    assert torch.equal(steps[:, 1, 2], torch.zeros(11, 32, 32))  # the padding slot of image 2
    torch.testing.assert_close(steps[0, 0], scores_with_background(
        F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False), cls[:1], 0.55)[0, [0, 1, 3]])


def test_valid_mask_kernel_reuse_and_no_classes() -> None:
    from core.method.par import par_kernel

    image, cam, cls, _ = _squares(64, seed=3)
    small = F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
    kernel = par_kernel(small)
    valid = torch.ones(1, 64, 64, dtype=torch.bool)
    valid[:, 40:] = False
    label = refine_label_two_backgrounds(image, cam, cls, valid=valid, ignore_index=IGN)
    assert (label[:, 40:] == IGN).all()
    with_kernel = refine_label_two_backgrounds(image, cam, cls, valid=valid, kernel=kernel)
    assert torch.equal(label, with_kernel)
    none = refine_label_two_backgrounds(image, cam, torch.zeros(1, 3))
    assert torch.equal(none, torch.zeros(1, 64, 64, dtype=torch.long))
    probs = scores_with_background(cam, cls, 0.55)
    label_rw = labels_from_background_runs(image, probs, probs, cls, valid=valid, kernel=kernel)
    assert (label_rw[:, 40:] == IGN).all()


def test_background_softmax_several_scores_on_a_token_grid() -> None:
    """(B, M, N) maps, two background scores at once: one softmax per score over the kept channels."""
    from core.method.cam import background_softmax

    cam = torch.tensor([[[0.2, 0.9, 0.0], [5.0, 5.0, 5.0]]])  # (1, 2 classes, 3 tokens); class 2 absent
    keep = torch.tensor([[True, True, False]])
    probs = background_softmax(cam, keep, (0.5, 0.1))
    assert probs.shape == (1, 2, 3, 3)
    for s, bg in enumerate((0.5, 0.1)):
        for n in range(3):
            expected = torch.tensor([bg, float(cam[0, 0, n])]).softmax(0)
            torch.testing.assert_close(probs[0, s, :2, n], expected)
    assert torch.equal(probs[:, :, 2], torch.zeros(1, 2, 3))  # the absent class: exactly 0
