"""Multi-scale, flipped passes of the model: the CAM of spec section 3 step 1 and the segmentation
of section 6, in one loop that training (``core.step``), ``core.analyze`` and ``core.evaluate``
share.

Each scale runs the model once on ``[images; flipped images]``. A scale in ``scales`` contributes
its CAM; a scale in ``seg_scales`` also runs the decoder and contributes its segmentation logits;
a scale in both is one pass. CAM-only passes never run the decoder (``forward_cam``): it is not
needed for CAMs, which is most of the saving over running the whole network at every scale.
The model passes run under the given precision (``core/precision.py``); every merge below is fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.cam import combine_multiscale_cams, normalize_cam
from core.models.common import EncoderOutput
from core.precision import Precision, resolve_precision

MIN_SIDE = 32  # the smallest input MiT's spatial-reduction convolutions accept
SEG_MERGES = ("max", "mean")


def scaled_size(h: int, w: int, scale: float, min_side: int = MIN_SIDE) -> tuple[int, int]:
    return max(int(h * scale), min_side), max(int(w * scale), min_side)


def resize_images(images: Tensor, scale: float, min_side: int = MIN_SIDE) -> Tensor:
    """Bilinear resize of ``(B, 3, H, W)`` by ``scale``; identity for scale 1."""
    h, w = images.shape[-2:]
    size = scaled_size(h, w, scale, min_side)
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def average_with_flip(pair: Tensor) -> Tensor:
    """``(2B, ...)`` outputs of ``[images; flipped images]`` -> ``(B, ...)``: the mean of each image's
    map and its flip's map flipped back."""
    b = pair.shape[0] // 2
    if pair.shape[0] != 2 * b:
        raise ValueError(f"expected an even batch (images and their flips), got {pair.shape[0]}")
    return (pair[:b] + pair[b:].flip(-1)) / 2


def merge_multiscale_seg(logits: Sequence[Tensor], size: tuple[int, int], merge: str = "max",
                         ref_size: tuple[int, int] | None = None) -> Tensor:
    """Segmentation logits of several scales -> one ``(B, C, H, W)`` map at ``size``.

    logits: per scale ``(B, C, h_s, w_s)`` (already averaged with the flip).
    ``max`` (the authors' test script, spec section 6): each map resized (bilinear,
    align_corners=False) to ``ref_size`` (default: the first map's, i.e. the logit resolution of
    scale 1.0 at stride 4), element-wise maximum over scales there, then resized to ``size``.
    ``mean``: each map resized to ``size``, then the mean over scales.
    """
    if not logits:
        raise ValueError("merge_multiscale_seg needs at least one scale")
    if merge not in SEG_MERGES:
        raise ValueError(f"seg merge must be one of {', '.join(SEG_MERGES)}, got {merge!r}")
    size = tuple(size)

    def resize(x: Tensor, to: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == to:
            return x
        return F.interpolate(x, size=to, mode="bilinear", align_corners=False)

    if merge == "mean":
        return torch.stack([resize(x, size) for x in logits]).mean(0)
    ref = tuple(ref_size) if ref_size is not None else tuple(logits[0].shape[-2:])
    merged = resize(logits[0], ref)
    for x in logits[1:]:
        merged = torch.maximum(merged, resize(x, ref))
    return resize(merged, size)


@dataclass
class MultiScaleCAM:
    """cam: ``(B, C-1, H, W)`` normalised to [0, 1] per image and class (not yet label-gated).
    affinity: ``(B, N, N)`` learned affinity of the largest CAM scale's pass (what propagation
    uses), attn: the softmax attention of the affinity blocks in that pass, grid: its token grid.
    seg: ``(B, C, H, W)`` merged segmentation logits (None without ``seg_scales``).
    logits: ``(B, C-1)`` classification logits of the scale-1.0 images (not the flips), and
    enc: that pass's encoder output (rows ``:B`` are the images), when ``unit_pass``."""

    cam: Tensor
    affinity: Tensor | None
    attn: list[Tensor]
    grid: tuple[int, int] | None
    seg: Tensor | None = None
    logits: Tensor | None = None
    enc: EncoderOutput | None = field(default=None, repr=False)


@torch.no_grad()
def multiscale_cam(
    model,
    images: Tensor,
    scales=(1.0, 0.5, 1.5),
    flip: bool = True,
    with_affinity: bool = False,
    eps: float = 1e-5,
    seg_scales: Sequence[float] = (),
    seg_merge: str = "max",
    unit_pass: bool = False,
    all_attention: bool = False,
    precision: str | Precision = "fp32",
    cls_label: Tensor | Callable[[Tensor], Tensor] | None = None,
) -> MultiScaleCAM:
    """images: normalised ``(B, 3, H, W)``. ``model`` is an ``AFANet`` (unwrapped from DDP).

    CAM (spec step 1): per scale in ``scales``, the CAM of the resized images and of their flips,
    each resized to (H, W), the element-wise max of the two (the flip un-flipped), ReLU; summed
    over scales and normalised (``combine_multiscale_cams``, ``normalize_cam``).
    Segmentation (spec section 6): per scale in ``seg_scales``, the decoder's logits averaged with
    the flip's, merged over scales by ``merge_multiscale_seg`` (``seg_merge``), the reference
    resolution being scale 1.0's logits when 1.0 is a segmentation scale.
    ``unit_pass``: also run scale 1.0 (if no list has it) and return its logits and encoder
    output; ``all_attention``: that pass computes every block's attention maps.
    ``precision``: the model passes' setting (``core/precision.py``).
    ``cls_label``: ``(B, C-1)`` image labels, or a function of the scale-1.0 logits ``(B, C-1)``
    that returns them (with ``unit_pass``: labels predicted by the model); when given, only the
    classes present in some image of the batch are resized and merged, the others are 0 (what
    ``gate_cam`` makes of them anyway: every step of the merge is per class).
    Attention maps and affinity are computed for the images only, not for their flips.
    """
    b, _, h, w = images.shape
    scales = tuple(float(s) for s in scales)
    seg_scales = tuple(float(s) for s in seg_scales)
    if not scales:
        raise ValueError("multiscale_cam needs at least one CAM scale")
    if seg_merge not in SEG_MERGES:
        raise ValueError(f"seg merge must be one of {', '.join(SEG_MERGES)}, got {seg_merge!r}")
    prec = resolve_precision(precision, images.device)
    largest = max(scales)
    order = dict.fromkeys(((1.0,) if unit_pass else ()) + scales + seg_scales)
    cams, segs, ref_size = [], [], None
    result = MultiScaleCAM(cam=images.new_zeros(0), affinity=None, attn=[], grid=None)
    for scale in order:
        x = resize_images(images, scale)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        want_aff = with_affinity and scale == largest and scale in scales and result.affinity is None
        want_all = all_attention and unit_pass and scale == 1.0
        with prec.autocast():
            if scale in seg_scales:
                out = model(x, with_decoder=True, with_affinity=want_aff, all_attention=want_all, map_rows=b)
            else:
                out = model.forward_cam(x, with_affinity=want_aff, all_attention=want_all, map_rows=b)
        if scale in scales:
            cams.append(out.cam)  # (2B, ...) pairs: resized first, then max with the flip
        if scale in seg_scales and out.seg is not None:
            segs.append(average_with_flip(out.seg) if flip else out.seg)
            if scale == 1.0:
                ref_size = tuple(out.seg.shape[-2:])
        if want_aff and out.affinity is not None:
            result.affinity = out.affinity[:b]
            result.attn = [out.enc.attn[i][:b] for i in model.attention_blocks()]
            result.grid = tuple(model.affinity_grid(out.enc))
        if unit_pass and scale == 1.0:
            result.logits = out.logits[:b]
            result.enc = out.enc
    if callable(cls_label):
        cls_label = cls_label(result.logits)
    keep = None if cls_label is None else (cls_label > 0).any(0).nonzero()[:, 0]
    if keep is not None:
        cams = [cam[:, keep] for cam in cams]
    if keep is None:
        result.cam = normalize_cam(combine_multiscale_cams(cams, (h, w), with_flip=flip), eps=eps)
    else:
        result.cam = out.cam.new_zeros(b, out.cam.shape[1], h, w)
        if keep.numel():
            merged = combine_multiscale_cams(cams, (h, w), with_flip=flip)
            result.cam[:, keep] = normalize_cam(merged, eps=eps)
    if segs:
        result.seg = merge_multiscale_seg(segs, (h, w), seg_merge, ref_size)
    return result
