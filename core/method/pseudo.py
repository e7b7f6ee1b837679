"""From CAMs to pseudo labels with PAR and two background scores (spec section 3, steps 4 and 7).

Both label paths run PAR twice, with a constant background score ``high`` (0.55) and ``low``
(0.35), and combine the two label maps: a pixel is class k where the high run says k, background
only where both runs say background, ignored where the high run says background but the low run
says foreground. The two runs share one PAR kernel and one ``apply_par`` call.

- ``refine_label_two_backgrounds``: step 4, from the normalised CAM (the refined pseudo label).
- ``labels_from_background_runs``: step 7, from the two probability maps that the random walk
  propagated with a background channel (AFA or MHSA affinity).

Channels of a score stack are ``[background, class 1, ..., class C-1]`` (channel index = class id).
Only background and the classes present in the image label compete: before PAR the other
channels are dropped, so PAR only refines ``1 + #present`` maps per run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.cam import allowed_channels, background_softmax
from core.method.par import DEFAULT_DILATIONS, refine_with_par


def combine_two_background_labels(label_high: Tensor, label_low: Tensor, ignore_index: int = 255) -> Tensor:
    """Combine the labels of the high- and low-background runs, (B, H, W) long each.

    high says k > 0 -> k; high and low both say 0 -> 0; high says 0, low anything else -> ignore;
    high ignore -> ignore.
    """
    high_bg = label_high == 0
    label = label_high.masked_fill(high_bg, ignore_index)
    return label.masked_fill(high_bg & (label_low == 0), 0)


def downscale_for_par(image: Tensor, downscale: int) -> Tensor:
    """The image (B, 3, H, W) at PAR resolution (H // downscale, W // downscale), bilinear,
    align_corners=False, as the authors; compute the shared PAR kernel on it."""
    if downscale == 1:
        return image
    h, w = image.shape[-2:]
    size = (max(1, h // downscale), max(1, w // downscale))  # a 1-pixel side stays 1 pixel
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def _compact_order(allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Per image the allowed channel ids first, ascending: ``order`` (B, P) long with P the largest
    count of allowed channels in the batch, and ``slot_valid`` (B, P) bool (False = padding)."""
    p = int(allowed.sum(dim=1).max())
    order = torch.sort((~allowed).to(torch.int32), dim=1, stable=True).indices[:, :p]
    return order, allowed.gather(1, order)


def _argmax_valid(scores: Tensor, slot_valid: Tensor) -> Tensor:
    """Argmax over dim 2 of ``scores`` (B, R, P, H, W) among the slots where ``slot_valid`` (B, P)
    (slot 0, the background, always is); first index on ties, as ``torch.argmax``. A loop over
    the few slots is much faster on a CPU than ``torch.argmax`` over a non-innermost dimension."""
    best = scores[:, :, 0]
    index = torch.zeros_like(best, dtype=torch.long)
    for i in range(1, scores.shape[2]):
        candidate = scores[:, :, i]
        better = (candidate > best) & slot_valid[:, None, i, None, None]
        best = torch.where(better, candidate, best)
        index.masked_fill_(better, i)
    return index


def _par_argmax(image_small: Tensor, runs: Tensor, order: Tensor, slot_valid: Tensor,
                out_size: tuple[int, int], dilations: Sequence[int], iters: int, w1: float, w2: float,
                kernel: Tensor | None, upsample_first: bool,
                return_steps: bool) -> tuple[Tensor, Tensor | None]:
    """Resize, PAR, upsample, argmax over the allowed channels: the one path both label kinds share.

    image_small: (B, 3, h', w') RGB 0-255 at PAR resolution; runs: (B, R, P, h, w) score stacks of
    R background runs, compacted to the allowed channels (``_compact_order``: ``order`` (B, P)
    class ids, ``slot_valid`` (B, P)); kernel: ``par_kernel(image_small)`` or None.
    ``upsample_first``: first bring the maps to ``out_size`` (bilinear, align_corners=False), as the
    authors do with propagated scores. The maps are then resized to (h', w') (bilinear,
    align_corners=True, inside ``refine_with_par``; a no-op when already there), refined in one
    call, upsampled to ``out_size`` (bilinear, align_corners=False) and arg-maxed over valid slots.
    Returns class ids (B, R, H, W) long and, with ``return_steps``, the PAR steps of the first
    run, (iters + 1, B, P, h', w').
    """
    b, r, p, h, w = runs.shape
    maps = runs.masked_fill(~slot_valid[:, None, :, None, None], 0.0).reshape(b, r * p, h, w)
    if upsample_first:
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    refined = refine_with_par(image_small, maps, dilations, iters, w1, w2, kernel=kernel,
                              return_steps=return_steps)
    steps = None
    if return_steps:
        refined, steps = refined
        steps = steps[:, :, :p]
    refined = F.interpolate(refined, size=out_size, mode="bilinear", align_corners=False)
    slot = _argmax_valid(refined.view(b, r, p, *out_size), slot_valid)
    labels = order.gather(1, slot.flatten(1)).view_as(slot)
    return labels, steps


def _finish(labels: Tensor, valid: Tensor | None, ignore_index: int) -> Tensor:
    label = combine_two_background_labels(labels[:, 0], labels[:, 1], ignore_index)
    if valid is not None:
        label = label.masked_fill(~valid.bool(), ignore_index)
    return label


def refine_label_two_backgrounds(
    image: Tensor, cam: Tensor, cls_label: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
    iters: int = 10, w1: float = 0.3, w2: float = 0.01, high: float = 0.55, low: float = 0.35,
    downscale: int = 2, valid: Tensor | None = None, ignore_index: int = 255, kernel: Tensor | None = None,
    return_steps: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The refined pseudo label of step 4.

    image: (B, 3, H, W) RGB 0-255; cam: (B, C - 1, h, w) normalised (normally h, w = H, W);
    cls_label: (B, C - 1); valid: (B, H, W) bool crop box (outside: ignore); kernel: reuse
    ``par_kernel`` of the image at PAR resolution (H // downscale, W // downscale).
    As the authors: the CAM is resized to PAR resolution (bilinear, align_corners=False), then
    ``[bg, present classes]`` is soft-maxed there, for bg = ``high`` and ``low``; both runs are
    refined in one PAR call, upsampled to (H, W), arg-maxed and combined
    (``combine_two_background_labels``).
    Returns the label (B, H, W) long; with ``return_steps`` also the PAR steps of the high run,
    (iters + 1, B, P, H // downscale, W // downscale), channels ``[background, present classes
    ascending]`` (images with fewer present classes than the batch's largest get zero channels
    at the end).
    """
    order, slot_valid = _compact_order(allowed_channels(cls_label))
    small = downscale_for_par(image, downscale)
    # only the present classes' CAMs are resized and soft-maxed (order[:, 0] is the background)
    index = (order[:, 1:] - 1)[:, :, None, None].expand(-1, -1, *cam.shape[-2:])
    cam_small = cam.new_zeros(cam.shape[0], 0, *small.shape[-2:])  # no class in the whole batch
    if index.shape[1]:
        cam_small = F.interpolate(cam.gather(1, index), size=small.shape[-2:], mode="bilinear",
                                  align_corners=False)
    runs = background_softmax(cam_small, slot_valid, (high, low))
    labels, steps = _par_argmax(small, runs, order, slot_valid, tuple(image.shape[-2:]), dilations,
                                iters, w1, w2, kernel, upsample_first=False, return_steps=return_steps)
    label = _finish(labels, valid, ignore_index)
    return (label, steps) if return_steps else label


def labels_from_background_runs(
    image: Tensor, probs_high: Tensor, probs_low: Tensor, cls_label: Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS, iters: int = 10, w1: float = 0.3, w2: float = 0.01,
    downscale: int = 2, valid: Tensor | None = None, ignore_index: int = 255, kernel: Tensor | None = None,
    return_steps: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The label of step 7 from two propagated probability maps (background ``high`` and ``low``).

    image: (B, 3, H, W) RGB 0-255; probs_high, probs_low: (B, C, h, w) stacks ``[background,
    classes]`` at any resolution (e.g. the token grid of the random walk); only background and the
    classes of ``cls_label`` (B, C - 1) can win. As the authors (utils/camutils.py,
    refine_cams_with_cls_label): the maps are upsampled to (H, W) (bilinear, align_corners=False),
    PAR runs at half resolution (the maps resized to the half-size image with bilinear,
    align_corners=True), its output is upsampled to (H, W) and arg-maxed. Both runs share one
    kernel (``kernel`` as in ``refine_label_two_backgrounds``) and one PAR call; the two label maps
    are combined as in step 4. Returns (B, H, W) long (and the steps of the high run).
    """
    order, slot_valid = _compact_order(allowed_channels(cls_label))
    small = downscale_for_par(image, downscale)
    runs = torch.stack([probs_high, probs_low], dim=1)
    b, r, _, h, w = runs.shape
    runs = runs.gather(2, order[:, None, :, None, None].expand(b, r, -1, h, w))
    labels, steps = _par_argmax(small, runs, order, slot_valid, tuple(image.shape[-2:]), dilations,
                                iters, w1, w2, kernel, upsample_first=True, return_steps=return_steps)
    label = _finish(labels, valid, ignore_index)
    return (label, steps) if return_steps else label
