"""Multi-scale, flipped CAM (spec section 3 step 1): the model-calling half of the CAM pipeline.

Only the encoder and the classifier run (``forward_cam``): the decoder is not needed for CAMs,
which is most of the saving over running the whole network at every scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.cam import combine_multiscale_cams, normalize_cam

MIN_SIDE = 32  # the smallest input MiT's spatial-reduction convolutions accept


def scaled_size(h: int, w: int, scale: float, min_side: int = MIN_SIDE) -> tuple[int, int]:
    return max(int(h * scale), min_side), max(int(w * scale), min_side)


def resize_images(images: Tensor, scale: float, min_side: int = MIN_SIDE) -> Tensor:
    """Bilinear resize of ``(B, 3, H, W)`` by ``scale``; identity for scale 1."""
    h, w = images.shape[-2:]
    size = scaled_size(h, w, scale, min_side)
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@dataclass
class MultiScaleCAM:
    """cam: ``(B, C-1, H, W)`` normalised to [0, 1] per image and class (not yet label-gated).
    affinity: ``(B, N, N)`` learned affinity of the largest-scale pass (what propagation uses),
    attn: the softmax attention of the affinity blocks in that pass, grid: its token grid."""

    cam: Tensor
    affinity: Tensor | None
    attn: list[Tensor]
    grid: tuple[int, int] | None


@torch.no_grad()
def multiscale_cam(
    model,
    images: Tensor,
    scales=(1.0, 0.5, 1.5),
    flip: bool = True,
    with_affinity: bool = False,
    eps: float = 1e-5,
) -> MultiScaleCAM:
    """images: normalised ``(B, 3, H, W)``. ``model`` is an ``AFANet`` (unwrapped from DDP)."""
    b, _, h, w = images.shape
    largest = max(scales)
    cams, aff, attn, grid = [], None, [], None
    for scale in scales:
        x = resize_images(images, scale)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        want_aff = with_affinity and scale == largest and aff is None
        out = model.forward_cam(x, with_affinity=want_aff)
        cams.append(out.cam)  # (2B, ...) pairs: resized first, then max with the flip
        if want_aff and out.affinity is not None:
            aff = out.affinity[:b]
            attn = [out.enc.attn[i][:b] for i in model.last_blocks(out.enc)]
            grid = model.affinity_grid(out.enc)
    cam = normalize_cam(combine_multiscale_cams(cams, (h, w), with_flip=flip), eps=eps)
    return MultiScaleCAM(cam, aff, attn, grid)
