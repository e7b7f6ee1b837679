"""Class activation maps: multi-scale merging, normalisation, gating and labels (spec section 3, steps 1-3).

Pure functions on tensors. A CAM is (B, K, H, W) with K = C - 1 foreground classes; channel i is
class id i + 1. Image-level labels ``cls_label`` are multi-hot (B, C - 1). Label maps are long
(B, H, W): 0 background, 1..C-1 classes, ``ignore_index`` ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def max_with_flip(cam_pair: Tensor, batch: int | None = None) -> Tensor:
    """Element-wise max of the CAMs of images and of their un-flipped horizontal flips.

    cam_pair: (2B, K, h, w), the model's output on the batch ``[images; images.flip(-1)]``.
    batch: B (default: half the first dimension). Returns (B, K, h, w).
    """
    b = cam_pair.shape[0] // 2 if batch is None else batch
    if cam_pair.shape[0] != 2 * b:
        raise ValueError(f"expected 2 * {b} CAMs (images and their flips), got {cam_pair.shape[0]}")
    return torch.maximum(cam_pair[:b], cam_pair[b:].flip(-1))


def combine_multiscale_cams(cams: Sequence[Tensor], size: tuple[int, int], with_flip: bool = False) -> Tensor:
    """Sum over scales of the CAMs resized to ``size`` (bilinear, align_corners=False) and ReLU'd.

    cams: one entry per scale. With ``with_flip=False`` each is (B, K, h_s, w_s), already merged
    with its flip (``max_with_flip``). With ``with_flip=True`` each is the raw (2B, K, h_s, w_s)
    pair of the batch ``[images; flipped images]`` and the order is the spec's exactly: resize,
    then max with the un-flipped flip, then ReLU. (Max and bilinear resizing do not commute, so
    the two orders differ slightly at object borders.) Returns (B, K, H, W), not normalised:
    see ``normalize_cam``.
    """
    if not cams:
        raise ValueError("combine_multiscale_cams needs at least one CAM")
    total = None
    for cam in cams:
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
        if with_flip:
            cam = max_with_flip(cam)
        cam = F.relu(cam)
        total = cam if total is None else total + cam
    return total


def normalize_cam(cam: Tensor, eps: float = 1e-5) -> Tensor:
    """Per image and class: subtract the minimum, divide by (the new maximum + eps).

    cam: (B, K, H, W) -> (B, K, H, W) in [0, 1). A map that is constant (e.g. all zero) becomes 0.
    """
    flat = cam.flatten(2)
    shifted = flat - flat.amin(dim=2, keepdim=True)
    return (shifted / (shifted.amax(dim=2, keepdim=True) + eps)).view_as(cam)


def gate_cam(cam: Tensor, cls_label: Tensor) -> Tensor:
    """Zero the channels of classes absent from the image label. cam (B, K, H, W), cls_label (B, K)."""
    return cam * (cls_label > 0).to(cam.dtype)[:, :, None, None]


def allowed_channels(cls_label: Tensor) -> Tensor:
    """(B, C) bool: background (always) and the classes of the image label (B, C - 1)."""
    bg = torch.ones_like(cls_label[:, :1], dtype=torch.bool)
    return torch.cat([bg, cls_label > 0], dim=1)


def background_softmax(cam: Tensor, keep: Tensor, bg_scores: Sequence[float]) -> Tensor:
    """For each constant background score, the softmax over ``[background, cam channels]`` where
    ``keep`` is True; the other channels are -inf before the softmax, hence exactly 0 after (they
    never win an argmax, and a random walk keeps them at 0).

    cam: (B, M, *spatial) (e.g. (B, M, H, W), or (B, M, N) on a token grid); keep: (B, M + 1) bool,
    channel 0 the background (see ``allowed_channels``). Returns (B, S, M + 1, *spatial) for the
    S = ``len(bg_scores)`` scores.
    """
    b, m, *spatial = cam.shape
    s, ones = len(bg_scores), [1] * len(spatial)
    bg = torch.tensor(bg_scores, dtype=cam.dtype, device=cam.device).view(1, s, 1, *ones)
    stack = torch.cat([bg.expand(b, s, 1, *spatial), cam[:, None].expand(b, s, m, *spatial)], dim=2)
    return stack.masked_fill(~keep.view(b, 1, m + 1, *ones), float("-inf")).softmax(dim=2)


def scores_with_background(cam: Tensor, cls_label: Tensor, bg_score: float) -> Tensor:
    """Softmax over ``[constant background bg_score, present classes]`` of the CAM.

    cam: (B, C - 1, H, W); cls_label: (B, C - 1) multi-hot. Returns (B, C, H, W) probabilities;
    absent classes are set to -inf before the softmax, so their channel is exactly 0 and the
    softmax runs over background and the present classes only.
    """
    return background_softmax(cam, allowed_channels(cls_label), (bg_score,))[:, 0]


def _max_class(cam: Tensor, cls_label: Tensor) -> tuple[Tensor, Tensor]:
    """Value (B, H, W) and class id (B, H, W) of the largest gated CAM channel."""
    value, index = gate_cam(cam, cls_label).max(dim=1)
    return value, index + 1


def _apply_valid(label: Tensor, valid: Tensor | None, ignore_index: int) -> Tensor:
    if valid is not None:
        label = label.masked_fill(~valid.bool(), ignore_index)
    return label


def cam_to_label(cam: Tensor, cls_label: Tensor, bg_thresh: float = 0.45, valid: Tensor | None = None,
                 ignore_index: int = 255) -> Tensor:
    """Initial label: argmax present class (id = index + 1), background where its value <= bg_thresh.

    cam: (B, K, H, W) normalised; cls_label: (B, K) multi-hot; valid: (B, H, W) bool crop box,
    pixels outside it get ``ignore_index``. Returns (B, H, W) long.
    """
    value, label = _max_class(cam, cls_label)
    label = label.masked_fill(value <= bg_thresh, 0)
    return _apply_valid(label, valid, ignore_index)


def cam_to_three_way_label(cam: Tensor, cls_label: Tensor, high: float = 0.55, low: float = 0.35,
                           valid: Tensor | None = None, ignore_index: int = 255) -> Tensor:
    """Training label: class where the max value v > high, ignore where low < v <= high, background
    where v <= low; outside ``valid`` ignore. Shapes as ``cam_to_label``."""
    value, label = _max_class(cam, cls_label)
    label = label.masked_fill(value <= high, ignore_index).masked_fill(value <= low, 0)
    return _apply_valid(label, valid, ignore_index)
