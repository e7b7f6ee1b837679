"""Affinity from attention: affinity labels, the affinity loss and random-walk propagation.

Everything works on the stride-16 token grid ``(h, w)`` with ``N = h * w`` tokens, flattened in
row-major order (token ``i`` sits at row ``i // w``, column ``i % w``). An affinity matrix is
``(B, N, N)``; entry ``(i, j)`` says how likely tokens ``i`` and ``j`` belong to the same class.

Spec (afa-spec.md, section 3): step 5 (labels), step 6 (loss), step 7 (random walk) and step 8
(the MHSA baseline).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.cam import allowed_channels, background_softmax

__all__ = [
    "radius_mask",
    "affinity_labels",
    "affinity_loss",
    "transition_matrix",
    "random_walk",
    "propagate_with_affinity",
    "mhsa_affinity",
]


@functools.lru_cache(maxsize=32)
def _cached_radius_mask(h: int, w: int, radius: int, device: torch.device) -> Tensor:
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (N,)
    cols = torch.arange(w, device=device).repeat(h)  # (N,)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def radius_mask(h: int, w: int, radius: int = 8, device: torch.device | str | None = None) -> Tensor:
    """Pairs of tokens of an ``(h, w)`` grid within a Chebyshev distance of ``radius``.

    Returns a bool tensor ``(N, N)``, ``N = h * w``, True where
    ``max(|row_i - row_j|, |col_i - col_j|) <= radius`` (the diagonal is True).

    The result is cached per ``(h, w, radius, device)`` because the training step asks for the
    same mask every iteration: treat it as read-only (clone it before modifying it in place).
    """
    if h < 1 or w < 1:
        raise ValueError(f"radius_mask needs a non-empty grid, got ({h}, {w})")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _cached_radius_mask(int(h), int(w), int(radius), device)


def _label_dtype(ignore_index: int) -> torch.dtype:
    return torch.uint8 if 0 <= ignore_index <= 255 else torch.long


def token_labels(label: Tensor, grid: tuple[int, int]) -> Tensor:
    """A label map ``(B, H, W)`` on the token grid ``(h, w)`` (nearest), flattened: ``(B, h * w)`` int64."""
    if label.dim() != 3:
        raise ValueError(f"label must be (B, H, W), got shape {tuple(label.shape)}")
    small = F.interpolate(label[:, None].float(), size=(int(grid[0]), int(grid[1])), mode="nearest")
    return small.flatten(1).long()


def affinity_labels(label: Tensor, grid: tuple[int, int], radius: int = 8, ignore_index: int = 255) -> Tensor:
    """Pairwise affinity labels from a (pseudo) label map.

    label: ``(B, H, W)`` integer class ids, ``ignore_index`` = unknown (padding included).
    grid: ``(h, w)`` the token grid; the label is resized to it with nearest-neighbour sampling.

    Returns ``(B, N, N)`` with ``N = h * w``: 1 where tokens ``i`` and ``j`` carry the same class,
    0 where they differ, ``ignore_index`` where either token is ``ignore_index`` or the two are
    farther apart than ``radius`` (Chebyshev distance on the grid). dtype uint8 when
    ``ignore_index`` fits in a byte (the default), else int64.
    """
    h, w = int(grid[0]), int(grid[1])
    flat = token_labels(label, (h, w))  # (B, N)
    dtype = _label_dtype(ignore_index)
    same = (flat[:, :, None] == flat[:, None, :]).to(dtype)  # (B, N, N)
    unknown = flat == ignore_index  # (B, N)
    drop = unknown[:, :, None] | unknown[:, None, :]
    drop = drop | ~radius_mask(h, w, radius, device=label.device)[None]
    return same.masked_fill_(drop, ignore_index)


def affinity_loss(aff: Tensor, aff_label: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """The AFA affinity loss (spec section 3, step 6).

    aff: ``(B, N, N)`` predicted affinity in (0, 1) (after the sigmoid).
    aff_label: ``(B, N, N)`` from :func:`affinity_labels` (1 positive, 0 negative, else ignored).

    Returns ``(loss, n_pos, n_neg)`` with
    ``loss = 0.5 * sum_pos(1 - A) / (n_pos + 1) + 0.5 * sum_neg(A) / (n_neg + 1)``, the sums and
    counts taken over the whole batch; ``n_pos``/``n_neg`` are the plain pair counts (int64
    tensors, without the +1). ``ignore_index`` is accepted for symmetry: every value other than
    0 and 1 is ignored.
    """
    if aff.shape != aff_label.shape:
        raise ValueError(f"aff {tuple(aff.shape)} and aff_label {tuple(aff_label.shape)} differ in shape")
    pos = aff_label == 1
    neg = aff_label == 0
    n_pos = pos.sum()
    n_neg = neg.sum()
    pos_term = torch.where(pos, 1.0 - aff, torch.zeros_like(aff)).sum() / (n_pos + 1)
    neg_term = torch.where(neg, aff, torch.zeros_like(aff)).sum() / (n_neg + 1)
    return 0.5 * pos_term + 0.5 * neg_term, n_pos, n_neg


def transition_matrix(
    aff: Tensor, radius_mask: Tensor | None = None, power: float = 2, col_eps: float = 0.1
) -> Tensor:
    """Random-walk transition matrix from an affinity (spec section 3, step 7).

    aff: ``(B, N, N)`` non-negative affinity. radius_mask: bool ``(N, N)`` (or ``(B, N, N)``);
    entries where it is False are set to 0 (None keeps every pair).

    Returns ``T`` ``(B, N, N)``: ``A' = (A * mask) ** power``, then every column ``j`` divided by
    ``sum_i A'[i, j] + col_eps`` (the ``col_eps`` keeps empty columns finite and damps columns
    with little total affinity).
    """
    if radius_mask is not None:
        aff = aff.masked_fill(~radius_mask.to(torch.bool), 0.0)
    aff = aff.pow(power)
    return aff / (aff.sum(dim=1, keepdim=True) + col_eps)


def random_walk(probs: Tensor, trans: Tensor, steps: int = 1) -> Tensor:
    """Propagate score maps with a transition matrix.

    probs: ``(B, K, N)`` or ``(B, K, h, w)`` with ``N = h * w``. trans: ``(B, N, N)``.
    One step is ``out[:, :, j] = sum_i probs[:, :, i] * T[:, i, j]`` (``probs @ T``); ``steps``
    applies it repeatedly. Returns the same shape as ``probs``.
    """
    shape = probs.shape
    flat = probs.flatten(2) if probs.dim() == 4 else probs
    if flat.shape[-1] != trans.shape[-2]:
        raise ValueError(f"probs have {flat.shape[-1]} tokens but trans is {tuple(trans.shape)}")
    for _ in range(steps):
        flat = torch.bmm(flat, trans)
    return flat.reshape(shape)


def propagate_with_affinity(
    cam_grid: Tensor,
    cls_label: Tensor,
    aff: Tensor,
    radius: int | Tensor | None,
    bg_score: float | Sequence[float],
    power: float = 2,
    col_eps: float = 0.1,
    steps: int = 1,
) -> Tensor:
    """Random-walk propagation of a label-gated CAM with an affinity (spec section 3, step 7).

    cam_grid: ``(B, C-1, h, w)`` CAM on the token grid (classes absent from the image may hold
        anything: they are excluded here).
    cls_label: ``(B, C-1)`` multi-hot image labels.
    aff: ``(B, N, N)`` affinity (learned, or :func:`mhsa_affinity` for the baseline), ``N = h*w``.
    radius: Chebyshev radius of the transition matrix, or a bool ``(N, N)`` mask, or None (no
        restriction).
    bg_score: the constant background score, or a sequence of them (e.g. ``(0.55, 0.35)``); all
        are propagated with one batched matmul so ``T`` is computed once.

    For each background score: stack ``[background, classes]``, softmax over the background and
    the present classes only (absent classes get exactly 0 and stay 0 after the walk, so they
    never win an argmax), then ``steps`` random-walk steps with :func:`transition_matrix`.

    Returns ``(B, C, h, w)`` for a single ``bg_score``, ``(S, B, C, h, w)`` for a sequence of
    ``S`` scores (so ``high, low = propagate_with_affinity(..., bg_score=(0.55, 0.35))`` works).
    Channel 0 is the background.
    """
    b, c_fg, h, w = cam_grid.shape
    n = h * w
    if aff.shape[-2:] != (n, n):
        raise ValueError(f"aff {tuple(aff.shape)} does not match the {h}x{w} grid of cam_grid")
    single = isinstance(bg_score, (int, float)) or getattr(bg_score, "ndim", 1) == 0
    scores = [float(bg_score)] if single else [float(v) for v in bg_score]
    s = len(scores)

    cams = cam_grid.flatten(2).to(aff.dtype)  # (B, C-1, N)
    probs = background_softmax(cams, allowed_channels(cls_label), scores).reshape(b, s * (c_fg + 1), n)

    if isinstance(radius, Tensor) or radius is None:
        mask = radius
    else:
        mask = radius_mask(h, w, int(radius), device=aff.device)
    trans = transition_matrix(aff, mask, power=power, col_eps=col_eps)
    out = random_walk(probs, trans, steps=steps).reshape(b, s, c_fg + 1, h, w)
    return out[:, 0] if single else out.transpose(0, 1)


def mhsa_affinity(attn_list: Sequence[Tensor] | Tensor) -> Tensor:
    """The "MHSA" baseline affinity (spec section 3, step 8).

    attn_list: softmax attention maps ``(B, heads, N, N)`` of the chosen blocks (a single tensor
        is one block). Keys must be the same tokens as the queries (no spatial reduction).

    Returns ``(B, N, N)``: the mean over heads and blocks ``M``, symmetrised as ``(M + M^T) / 2``.
    """
    maps = [attn_list] if isinstance(attn_list, Tensor) else list(attn_list)
    if not maps:
        raise ValueError("mhsa_affinity needs at least one attention map")
    for a in maps:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention must be (B, heads, N, N) with N' == N, got {tuple(a.shape)}")
    mean = torch.stack([a.mean(dim=1) for a in maps]).mean(dim=0)  # (B, N, N)
    return 0.5 * (mean + mean.transpose(1, 2))
