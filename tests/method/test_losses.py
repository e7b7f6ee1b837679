"""Tests of core.method.losses: classification, balanced segmentation and dense-CRF energy losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.method import losses
from core.method.losses import balanced_seg_loss, classification_loss, dense_crf_energy_loss

IGN = 255


def test_classification_loss_is_multilabel_soft_margin():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    # mean over classes of -[y log sigmoid(x) + (1 - y) log sigmoid(-x)]
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.5))) / 3
    assert classification_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def _seg_logits() -> torch.Tensor:
    # (1, C=3, 2, 2): pixel (0,0) [2,0,0], (0,1) [0,1,0], (1,0) [0,0,0], (1,1) [5,-5,0]
    return torch.tensor(
        [[[[2.0, 0.0], [0.0, 5.0]], [[0.0, 1.0], [0.0, -5.0]], [[0.0, 0.0], [0.0, 0.0]]]],
        requires_grad=True,
    )


def test_balanced_seg_loss_by_hand():
    label = torch.tensor([[[0, 1], [2, IGN]]])
    ce_bg = math.log(1 + 2 * math.exp(-2))  # pixel (0,0), class 0
    ce_fg1 = math.log(1 + 2 * math.exp(-1))  # pixel (0,1), class 1
    ce_fg2 = math.log(3)  # pixel (1,0), class 2
    expected = 0.5 * (ce_bg + 0.5 * (ce_fg1 + ce_fg2))
    assert balanced_seg_loss(_seg_logits(), label).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_seg_loss_only_background_or_only_foreground():
    logits = _seg_logits()
    only_bg = torch.tensor([[[0, 0], [IGN, IGN]]])
    expected_bg = 0.5 * 0.5 * (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e))
    assert balanced_seg_loss(logits, only_bg).item() == pytest.approx(expected_bg, rel=1e-6)
    only_fg = torch.tensor([[[IGN, 1], [2, IGN]]])
    expected_fg = 0.5 * 0.5 * (math.log(1 + 2 * math.exp(-1)) + math.log(3))
    assert balanced_seg_loss(logits, only_fg).item() == pytest.approx(expected_fg, rel=1e-6)


def test_balanced_seg_loss_ignore_everything_is_zero_with_finite_gradient():
    logits = _seg_logits()
    loss = balanced_seg_loss(logits, torch.full((1, 2, 2), IGN))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_balanced_seg_loss_ignored_pixel_has_no_gradient():
    logits = _seg_logits()
    balanced_seg_loss(logits, torch.tensor([[[0, 1], [2, IGN]]])).backward()
    assert (logits.grad[0, :, 1, 1] == 0).all()
    assert (logits.grad[0, :, 0, 0] != 0).any()


# ---------------------------------------------------------------- dense-CRF energy loss


def naive_energy(
    probs: torch.Tensor,
    image: torch.Tensor,
    sigma_rgb: float,
    sigma_xy: float,
    valid: torch.Tensor | None = None,
    step: float = 1.0,
) -> torch.Tensor:
    """Double loop in float64 over one image: sum_{i != j} W_ij sum_k S_ik (1 - S_jk) / n_valid.

    probs (K, h, w), image (3, h, w), pixel spacing ``step`` in full-resolution pixels.
    """
    k, h, w = probs.shape
    p = probs.double().reshape(k, -1)
    img = image.double().reshape(3, -1)
    n = h * w
    keep = [True] * n if valid is None else valid.reshape(-1).tolist()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i == j or not keep[i] or not keep[j]:
                continue
            dy, dx = (i // w - j // w) * step, (i % w - j % w) * step
            d_rgb = float(((img[:, i] - img[:, j]) ** 2).sum())
            wij = math.exp(-(dy * dy + dx * dx) / (2 * sigma_xy**2) - d_rgb / (2 * sigma_rgb**2))
            total = total + wij * (p[:, i] * (1 - p[:, j])).sum()
    return total / sum(keep)


def _energy_inputs(seed: int, b: int = 1, k: int = 3, h: int = 5, w: int = 4, double: bool = True):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    logits = torch.randn(b, k, h, w, generator=g, dtype=dtype)
    image = 100 + 40 * torch.rand(b, 3, h, w, generator=g, dtype=dtype)
    return logits, image


SIG = {"sigma_rgb": 15.0, "sigma_xy": 2.0}
PIXELS = {**SIG, "normalize": "pixels"}  # the loss per pixel: the scale the references compute


def test_energy_exact_equals_naive_double_loop_with_gradient():
    logits, image = _energy_inputs(0)
    logits.requires_grad_(True)
    loss = dense_crf_energy_loss(logits.softmax(1), image, scale=1.0, **PIXELS)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = naive_energy(ref_logits.softmax(1)[0], image[0], **SIG)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    loss.backward()
    ref.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_energy_at_half_scale_keeps_sigma_xy_in_full_resolution_pixels():
    logits, image = _energy_inputs(1, h=10, w=8)
    probs = logits.softmax(1)
    loss = dense_crf_energy_loss(probs, image, scale=0.5, **PIXELS)
    small_p = F.interpolate(probs, size=(5, 4), mode="bilinear", align_corners=False)
    small_i = F.interpolate(image, size=(5, 4), mode="bilinear", align_corners=False)
    ref = naive_energy(small_p[0], small_i[0], step=2.0, **SIG)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)


def test_energy_chunking_does_not_change_the_result(monkeypatch):
    logits, image = _energy_inputs(2, b=2, h=6, w=5)
    probs = logits.softmax(1)
    full = dense_crf_energy_loss(probs, image, scale=1.0, **PIXELS)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 7)  # a few rows at a time
    chunked = dense_crf_energy_loss(probs, image, scale=1.0, **PIXELS)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-12)


def test_energy_is_zero_for_one_hot_single_class():
    _, image = _energy_inputs(3)
    probs = torch.zeros(1, 3, 5, 4, dtype=torch.float64)
    probs[:, 1] = 1.0
    assert dense_crf_energy_loss(probs, image, scale=1.0, **PIXELS).item() == pytest.approx(0.0, abs=1e-12)


def test_energy_positive_for_a_split_and_invariant_to_class_permutation():
    logits, image = _energy_inputs(4)
    probs = logits.softmax(1)
    base = dense_crf_energy_loss(probs, image, scale=1.0, **PIXELS)
    assert base.item() > 0
    permuted = dense_crf_energy_loss(probs[:, [2, 0, 1]], image, scale=1.0, **PIXELS)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)


def test_energy_batch_mean_and_sum_normalisation():
    logits, image = _energy_inputs(5, b=2)
    probs = logits.softmax(1)
    both = dense_crf_energy_loss(probs, image, scale=1.0, **PIXELS)
    each = [dense_crf_energy_loss(probs[i : i + 1], image[i : i + 1], scale=1.0, **PIXELS) for i in range(2)]
    assert both.item() == pytest.approx((each[0].item() + each[1].item()) / 2, rel=1e-12)
    summed = dense_crf_energy_loss(probs, image, scale=1.0, **{**SIG, "normalize": "sum"})
    assert summed.item() == pytest.approx(20 * both.item(), rel=1e-12)


def test_energy_valid_mask_excludes_pixels():
    logits, image = _energy_inputs(6)
    probs = logits.softmax(1)
    valid = torch.ones(1, 5, 4, dtype=torch.bool)
    valid[:, :, 3] = False  # last column is padding
    valid[:, 0, 0] = False
    loss = dense_crf_energy_loss(probs, image, valid=valid, scale=1.0, **PIXELS)
    ref = naive_energy(probs[0], image[0], valid=valid[0], **SIG)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    # whatever the excluded pixels hold changes nothing
    other = probs.clone()
    other[:, :, :, 3] = torch.tensor([1.0, 0.0, 0.0], dtype=other.dtype)[:, None]
    other_image = image.clone()
    other_image[:, :, 0, 0] = 0.0
    again = dense_crf_energy_loss(other, other_image, valid=valid, scale=1.0, **PIXELS)
    assert again.item() == pytest.approx(loss.item(), rel=1e-12)
    nothing = dense_crf_energy_loss(probs, image, valid=torch.zeros_like(valid), scale=1.0, **PIXELS)
    assert nothing.item() == 0.0


def test_energy_monte_carlo_is_unbiased():
    logits, image = _energy_inputs(7, h=6, w=5, double=False)
    logits = logits.requires_grad_(True)
    exact = dense_crf_energy_loss(logits.softmax(1), image, scale=1.0, **PIXELS)
    (exact_grad,) = torch.autograd.grad(exact, logits)
    # Every image of a batch draws its own partners, so a batch of copies averages many independent
    # estimates in one call (the loss is the batch mean, its gradient the mean gradient).
    copies = 8000
    g = torch.Generator().manual_seed(0)
    probs = logits.softmax(1).expand(copies, -1, -1, -1)
    mc = dense_crf_energy_loss(
        probs,
        image.expand(copies, -1, -1, -1),
        scale=1.0,
        exact_max_pixels=0,
        samples=16,
        generator=g,
        **PIXELS,
    )
    (mc_grad,) = torch.autograd.grad(mc, logits)
    assert mc.item() == pytest.approx(exact.item(), rel=0.02)
    assert (mc_grad - exact_grad).norm() < 0.05 * exact_grad.norm()
    one = [
        dense_crf_energy_loss(
            logits.softmax(1), image, scale=1.0, exact_max_pixels=0, samples=16, generator=g, **PIXELS
        ).item()
        for _ in range(2)
    ]
    assert one[0] != one[1]  # it is random


def test_energy_monte_carlo_respects_valid_mask():
    logits, image = _energy_inputs(8, h=6, w=5, double=False)
    probs = logits.softmax(1)
    valid = torch.ones(1, 6, 5, dtype=torch.bool)
    valid[:, 3:] = False
    exact = dense_crf_energy_loss(probs, image, valid=valid, scale=1.0, **PIXELS)
    copies = 2000
    g = torch.Generator().manual_seed(1)
    mc = dense_crf_energy_loss(
        probs.expand(copies, -1, -1, -1),
        image.expand(copies, -1, -1, -1),
        valid=valid.expand(copies, -1, -1),
        scale=1.0,
        exact_max_pixels=0,
        samples=8,
        generator=g,
        **PIXELS,
    )
    assert mc.item() == pytest.approx(exact.item(), rel=0.02)
