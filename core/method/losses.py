"""Training losses of AFA (spec section 5) other than the affinity loss (see ``affinity.py``).

- :func:`classification_loss`: multi-label soft margin on the image-level labels.
- :func:`balanced_seg_loss`: cross-entropy balanced between background and foreground pixels.
- :func:`dense_crf_energy_loss`: the dense-CRF (Potts) regularised loss of Tang et al. 2018,
  "On Regularized Losses for Weakly-supervised CNN Segmentation", in plain PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import DEFAULTS

__all__ = ["classification_loss", "balanced_seg_loss", "dense_crf_energy_loss"]

# Largest number of kernel entries (batch x rows x partners) evaluated at once by the energy loss.
_CHUNK_ELEMENTS = 1 << 22
_REG = DEFAULTS["loss"]  # the energy loss's settings (loss.reg_*): its defaults
# Kernel entries per block on a CPU: about 1 MB of fp32, so the kernel's exponent, exp, masking
# and the two reductions run in cache (measured: L_reg of a batch of 8 160 px crops 0.26 s ->
# 0.11 s of CPU time). The partners drawn (per chunk) do not depend on it.
_CACHE_ELEMENTS = 1 << 18


def _block_elements(device: torch.device) -> int:
    """Kernel entries evaluated at once: cache-sized on a CPU, whole chunks elsewhere (a GPU
    prefers fewer, larger launches)."""
    return min(_CHUNK_ELEMENTS, _CACHE_ELEMENTS) if device.type == "cpu" else _CHUNK_ELEMENTS


def classification_loss(logits: Tensor, cls_label: Tensor) -> Tensor:
    """Multi-label soft margin loss.

    logits: ``(B, C-1)`` foreground class logits; cls_label: ``(B, C-1)`` multi-hot (0/1).
    Returns a scalar: the mean over images and classes of the per-class logistic loss.
    """
    return F.multilabel_soft_margin_loss(logits, cls_label.to(logits.dtype))


def balanced_seg_loss(logits: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy averaged separately over background and foreground pixels.

    logits: ``(B, C, H, W)`` segmentation logits, already resized to the label by the caller.
    label: ``(B, H, W)`` class ids (0 background, 1..C-1 foreground, ``ignore_index`` ignored).

    Returns ``0.5 * (bg + fg)`` where ``bg`` is the mean cross-entropy over all background
    pixels of the batch and ``fg`` over all foreground pixels. A part with no pixels contributes
    0 (the other part is still halved), so a batch without foreground -- or entirely ignored --
    gives a finite loss instead of the NaN that a mean over zero pixels would produce (the
    authors' two ``F.cross_entropy`` calls return NaN in that case).
    """
    label = label.long()
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    bg = label == 0
    fg = (label != 0) & (label != ignore_index)
    zero = torch.zeros_like(ce)
    bg_loss = torch.where(bg, ce, zero).sum() / bg.sum().clamp(min=1)
    fg_loss = torch.where(fg, ce, zero).sum() / fg.sum().clamp(min=1)
    return 0.5 * (bg_loss + fg_loss)


def _kernel_features(image: Tensor, step: tuple[float, float], sigma_rgb: float, sigma_xy: float) -> Tensor:
    """Per-pixel features ``(B, n, 5)`` such that the bilateral kernel is ``exp(-|f_i - f_j|^2 / 2)``.

    image: ``(B, 3, h, w)`` RGB 0-255; ``step``: the size of one pixel of this grid in pixels of
    the original image, so that ``sigma_xy`` keeps its full-resolution meaning.
    """
    b, _, h, w = image.shape
    ys = torch.arange(h, device=image.device, dtype=image.dtype) * (step[0] / sigma_xy)
    xs = torch.arange(w, device=image.device, dtype=image.dtype) * (step[1] / sigma_xy)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, h * w, 2).expand(b, -1, -1)
    rgb = image.flatten(2).transpose(1, 2) / sigma_rgb  # (B, n, 3)
    return torch.cat([pos, rgb], dim=-1)


def _augment(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Features ``(B, n, 5)`` -> row and column forms ``(B, n, 7)`` whose dot product is
    ``-|f_i - f_j|^2 / 2``: rows ``[f, -|f|^2 / 2, 1]``, columns ``[f, 1, -|f|^2 / 2]``, so one
    matrix product gives the kernel's exponent."""
    half_sq = -0.5 * feats.square().sum(-1, keepdim=True)
    one = torch.ones_like(half_sq)
    return torch.cat([feats, half_sq, one], dim=-1), torch.cat([feats, one, half_sq], dim=-1)


def _kernel(rows: Tensor, cols: Tensor) -> Tensor:
    """Gaussian kernel ``exp(-|f_i - f_j|^2 / 2)`` ``(B, r, m)`` from the augmented rows ``(B, r, 7)``
    and columns ``(B, m, 7)`` of :func:`_augment`; the exponent is clamped at 0 (rounding)."""
    return torch.bmm(rows, cols.transpose(1, 2)).clamp_(max=0.0).exp_()


@torch.no_grad()
def _exact_messages(feats: Tensor, probs: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Exact ``d_i = sum_j W_ij`` and ``F_i = sum_j W_ij S_j`` over valid ``j != i``.

    feats ``(B, n, 5)``, probs ``(B, n, K)``, valid ``(B, n)`` bool -> ``(B, n)``, ``(B, n, K)``.
    Rows are processed in chunks so at most ``_CHUNK_ELEMENTS`` kernel entries exist at once.
    """
    b, n, _ = feats.shape
    col_weight = valid.to(feats.dtype).unsqueeze(1)  # (B, 1, n)
    rows = max(1, _block_elements(feats.device) // max(1, b * n))
    degree = feats.new_zeros(b, n)
    message = feats.new_zeros(b, n, probs.shape[-1])
    f_rows, f_cols = _augment(feats)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        kern = _kernel(f_rows[:, start:stop], f_cols).mul_(col_weight)  # (B, r, n)
        idx = torch.arange(stop - start, device=feats.device)
        kern[:, idx, idx + start] = 0.0  # no self pair
        degree[:, start:stop] = kern.sum(-1)
        message[:, start:stop] = torch.bmm(kern, probs)
    return degree, message


@torch.no_grad()
def _sampled_messages(
    feats: Tensor, probs: Tensor, valid: Tensor, samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Monte Carlo estimates of :func:`_exact_messages`.

    For each chunk of rows, ``samples`` partners ``j`` are drawn uniformly with replacement from
    the valid pixels of the image; ``n_valid / samples * sum_t W_ij_t [j_t != i] (1, S_j_t)`` is an
    unbiased estimate of ``(d_i, F_i)``. Every chunk draws its own partners.
    """
    b, n, _ = feats.shape
    weights = valid.to(feats.dtype)
    n_valid = weights.sum(-1)  # (B,)
    # An image without valid pixels still needs a distribution to sample from; its rows are
    # masked out by the caller anyway.
    weights = torch.where(n_valid[:, None] > 0, weights, torch.ones_like(weights))
    scale = (n_valid / samples).view(b, 1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b * samples))
    degree = feats.new_zeros(b, n)
    message = feats.new_zeros(b, n, probs.shape[-1])
    f_rows, f_cols = _augment(feats)
    # partners are drawn per chunk of ``rows``; the kernel is evaluated in cache-sized sub-blocks
    block = max(1, _block_elements(feats.device) // max(1, b * samples))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        partners = torch.multinomial(weights, samples, replacement=True, generator=generator)  # (B, M)
        f_j = torch.gather(f_cols, 1, partners[..., None].expand(-1, -1, f_cols.shape[-1]))
        s_j = torch.gather(probs, 1, partners[..., None].expand(-1, -1, probs.shape[-1]))
        for lo in range(start, stop, block):
            hi = min(stop, lo + block)
            kern = _kernel(f_rows[:, lo:hi], f_j)  # (B, r, M)
            bi, ti = ((partners >= lo) & (partners < hi)).nonzero(as_tuple=True)
            kern[bi, partners[bi, ti] - lo, ti] = 0.0  # no self pair (a few entries)
            degree[:, lo:hi] = kern.sum(-1) * scale
            message[:, lo:hi] = torch.bmm(kern, s_j) * scale[..., None]
    return degree, message


def dense_crf_energy_loss(
    probs: Tensor,
    image: Tensor,
    valid: Tensor | None = None,
    sigma_rgb: float = _REG["reg_sigma_rgb"],
    sigma_xy: float = _REG["reg_sigma_xy"],
    scale: float = _REG["reg_scale"],
    exact_max_pixels: int = _REG["reg_exact_max_pixels"],
    samples: int = _REG["reg_samples"],
    generator: torch.Generator | None = None,
    normalize: str = _REG["reg_normalize"],
) -> Tensor:
    """Dense-CRF (Potts) regularised loss of Tang et al. 2018 (spec section 5, ``L_reg``).

    probs: ``(B, K, H, W)`` class probabilities (softmax of the segmentation logits); the loss is
        differentiable with respect to them (the image and the mask are data, no gradient).
    image: ``(B, 3, H, W)`` RGB on the 0-255 scale. valid: ``(B, H, W)`` bool, False on pixels to
        exclude (crop padding); None keeps every pixel.

    Both are resized to ``scale`` x the resolution (bilinear; ``valid`` nearest) giving ``n`` pixels
    per image, and with ``S_k`` the probabilities of class ``k`` over valid pixels the energy is

        ``E = sum_k S_k^T W (1 - S_k) = sum_{i != j} W_ij sum_k S_ik (1 - S_jk)``,
        ``W_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))``,

    with positions ``p`` in pixels of the original (full-resolution) image, so ``sigma_xy`` means
    the same at every ``scale``, and no self pair. ``E`` is 0 for hard labels that agree
    everywhere and grows with the kernel weight of pairs that are labelled differently.

    The defaults are the config's (``loss.reg_*`` in ``DEFAULTS``).

    Normalisation: ``normalize="pixels"`` divides each image's energy by its number of valid
    pixels at the loss resolution, and averages the result over the batch. The loss is then the
    average, per pixel, of the kernel weight it sends to the other classes, so it does not scale
    with the batch size nor with the area of the crop that is padding. Note it is not resolution
    free: a pixel's kernel mass ``sum_j W_ij`` grows with the number of pixels within
    ``sigma_xy``. ``normalize="sum"`` (the config's) returns the un-normalised energy summed over
    pixels and averaged over images, which is the scale of the authors' ``DenseEnergyLoss`` (they divide
    by the number of images and multiply by a weight of 1e-7; their value is ``-sum_k S_k^T W S_k``,
    which differs from ``E`` by the constant ``-1^T W 1`` and has the same gradient when the
    probabilities sum to one, and they additionally weight pixels by ``1 - max_k S_k`` where a
    pseudo label exists, which is not part of the energy and is not done here).

    Computation: if ``n <= exact_max_pixels`` the dense sum is exact, evaluated in row chunks so
    that memory stays bounded (``O(chunk x n)``). Otherwise it is a Monte Carlo approximation:
    for each pixel, ``samples`` partner pixels drawn uniformly with replacement from the valid
    pixels of its image (shared within a chunk of rows) stand in for the full sum, rescaled by
    ``n_valid / samples``. Its expectation equals the exact energy (and its gradient the exact
    gradient); its variance shrinks as ``1 / samples``. ``generator`` (on the tensors' device)
    makes the sampling reproducible.

    The kernel sums are computed without autograd: with ``d_i = sum_j W_ij`` and
    ``F_i = sum_j W_ij S_j`` the energy is ``sum_i (d_i sum_k S_ik - S_i . F_i)``, and since ``W`` is
    symmetric its gradient is ``d_i - 2 F_i``; the returned tensor has exactly this value and
    gradient while autograd stores only ``O(n K)`` numbers.
    """
    if probs.dim() != 4 or image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(
            f"probs must be (B, K, H, W) and image (B, 3, H, W), got {tuple(probs.shape)}, "
            f"{tuple(image.shape)}"
        )
    if probs.shape[0] != image.shape[0] or probs.shape[2:] != image.shape[2:]:
        raise ValueError(f"probs {tuple(probs.shape)} and image {tuple(image.shape)} do not match")
    if normalize not in ("pixels", "sum"):
        raise ValueError(f"normalize must be 'pixels' or 'sum', got {normalize!r}")
    b, k, height, width = probs.shape
    h = max(1, int(math.floor(height * scale)))
    w = max(1, int(math.floor(width * scale)))
    image = image.to(probs.dtype)
    if valid is None:
        valid = torch.ones(b, height, width, dtype=torch.bool, device=probs.device)
    if (h, w) != (height, width):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
        valid = F.interpolate(valid[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
    n = h * w
    flat_probs = probs.flatten(2).transpose(1, 2)  # (B, n, K)
    flat_valid = valid.reshape(b, n).to(torch.bool)
    feats = _kernel_features(image.detach(), (height / h, width / w), sigma_rgb, sigma_xy)

    probs_const = flat_probs.detach()
    if n <= exact_max_pixels:
        degree, message = _exact_messages(feats, probs_const, flat_valid)
    else:
        degree, message = _sampled_messages(feats, probs_const, flat_valid, samples, generator)

    # value: sum_i m_i (d_i s_i - S_i.F_i); gradient: m_i (d_i - 2 F_i) (see the docstring).
    row_weight = flat_valid.to(flat_probs.dtype)
    linear = degree * flat_probs.sum(-1) - 2.0 * (flat_probs * message).sum(-1)
    constant = (probs_const * message).sum(-1)
    energy = ((linear + constant) * row_weight).sum(-1)  # (B,)
    if normalize == "pixels":
        energy = energy / row_weight.sum(-1).clamp(min=1.0)
    return energy.mean()
