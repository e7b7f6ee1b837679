"""PAR, Pixel-Adaptive Refinement (AFA spec, section 4).

PAR smooths score maps with an image-dependent kernel: every pixel looks at 8 neighbours at each
dilation (48 neighbours for the default dilations (1, 2, 4, 8, 12, 24); the pixel itself is not
one of them, borders are replicated) and, ``iters`` times, becomes the kernel-weighted sum of
its neighbours. The kernel depends on the image only, so it is computed once by ``par_kernel``
and applied to any number of score maps by ``apply_par`` (concatenate map sets along channels).

Neighbour order, used by the kernel's channel axis: for each dilation ``d`` in the given order,
the 8 offsets ``(dy, dx)`` in raster order ``(-d,-d) (-d,0) (-d,d) (0,-d) (0,d) (d,-d) (d,0) (d,d)``.

Speed: neighbours are shifted views (slices) of one replicate-padded tensor, and the weighted
sum accumulates one neighbour at a time, so no ``(B, K, 48, H, W)`` tensor is ever built; this
keeps the working set in cache and is far faster on a CPU than gathering all neighbours with a
convolution (see tests/method/test_par.py, ``reference_par_authors_style``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)  # mirrors config par.dilations
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def par_offsets(dilations: Sequence[int] = DEFAULT_DILATIONS) -> list[tuple[int, int]]:
    """The ``8 * len(dilations)`` neighbour offsets ``(dy, dx)`` in kernel channel order."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in _RING]


def _shifted_views(x: Tensor, offsets: list[tuple[int, int]]) -> list[Tensor]:
    """For each offset, the view ``v`` of ``x`` (B, C, H, W) with ``v[..., y, x] = x[..., y + dy, x + dx]``,
    coordinates clamped to the image (replicate padding). Views share one padded tensor."""
    h, w = x.shape[-2:]
    p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, [p, p, p, p], mode="replicate")
    return [padded[..., p + dy:p + dy + h, p + dx:p + dx + w] for dy, dx in offsets]


def _position_weights(dilations: Sequence[int], w1: float, w2: float, dtype: torch.dtype,
                      device: torch.device) -> Tensor:
    """``w2 * softmax`` of the position term over the neighbours, (N,). The same for every pixel."""
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in par_offsets(dilations)], dtype=torch.float64)
    term = -(dist / (dist.std() + 1e-8) / w1) ** 2  # torch.std: unbiased, as the authors
    return (w2 * term.softmax(0)).to(dtype=dtype, device=device)


def par_kernel(image: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, w1: float = 0.3,
               w2: float = 0.01) -> Tensor:
    """The PAR kernel of an RGB image, computed once per image.

    image: (B, 3, H, W) RGB on the 0-255 scale (any float dtype; integers become float32).
    Returns (B, N, H, W) with N = 8 * len(dilations), in ``par_offsets`` order:
    ``softmax_N(appearance) + w2 * softmax_N(position)``, so it sums to ``1 + w2`` per pixel.

    Appearance term of neighbour j of pixel i: the mean over RGB of ``-(|I_i - I_j| / (s + 1e-8) / w1)^2``
    with ``s`` the standard deviation of that channel over the N neighbours of pixel i. ``s`` is the
    unbiased estimate (divides by N - 1), as ``torch.std`` in the authors' code. Position term:
    ``-(d_j / (s_d + 1e-8) / w1)^2`` with ``d_j`` the offset length (dilation, times sqrt(2) on
    diagonals) and ``s_d`` the unbiased standard deviation of the N lengths.
    """
    if not image.is_floating_point():
        image = image.float()
    offsets = par_offsets(dilations)
    n = len(offsets)
    views = _shifted_views(image, offsets)
    # two-pass standard deviation per channel over the neighbours (stable where s is tiny)
    mean = views[0].clone()
    for v in views[1:]:
        mean.add_(v)
    mean.div_(n)
    sq = torch.zeros_like(image)
    for v in views:
        sq.add_((v - mean).square_())
    std = sq.div_(n - 1).sqrt_()
    # -(|diff| / (s + eps) / w1)^2 averaged over 3 channels == -sum_c diff_c^2 * inv_c
    inv = 1.0 / (image.shape[1] * (w1 * (std + 1e-8)) ** 2)
    b, _, h, w = image.shape
    appearance = torch.empty(b, n, h, w, dtype=image.dtype, device=image.device)
    for j, v in enumerate(views):
        torch.sum((v - image).square_().mul_(inv), dim=1, out=appearance[:, j])
    kernel = appearance.neg_().softmax(dim=1)
    return kernel.add_(_position_weights(dilations, w1, w2, image.dtype, image.device).view(1, n, 1, 1))


def apply_par(kernel: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, iters: int = 10,
              return_steps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Iterate ``iters`` times: every pixel of ``maps`` becomes the kernel-weighted sum of its neighbours.

    kernel: (B, N, H, W) from ``par_kernel`` with the same ``dilations``.
    maps: (B, K, H, W) score maps at the kernel's resolution, any K; one call refines every map
    set computed on the same image (concatenate them along K).
    Returns the refined maps (B, K, H, W); with ``return_steps`` also every step stacked
    step-first, (iters + 1, B, K, H, W), step 0 being the input.

    The kernel sums to ``1 + w2``, so (as in the authors' code) each iteration also scales the maps
    by ``1 + w2``: a spatially constant map c becomes ``c * (1 + w2) ** iters``. Argmax over
    channels is unaffected.
    """
    offsets = par_offsets(dilations)
    if kernel.shape[1] != len(offsets):
        raise ValueError(f"kernel has {kernel.shape[1]} neighbours but dilations {tuple(dilations)} "
                         f"give {len(offsets)}")
    if kernel.shape[0] != maps.shape[0] or kernel.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"kernel {tuple(kernel.shape)} and maps {tuple(maps.shape)} differ in batch or size")
    kernel = kernel.to(maps.dtype)
    weights = [kernel[:, j:j + 1] for j in range(len(offsets))]  # (B, 1, H, W), broadcast over K
    steps = [maps]
    for _ in range(iters):
        views = _shifted_views(maps, offsets)
        out = weights[0] * views[0]
        for weight, view in zip(weights[1:], views[1:]):
            out.addcmul_(weight, view)
        maps = out
        if return_steps:
            steps.append(maps)
    if return_steps:
        return maps, torch.stack(steps)
    return maps


def refine_with_par(image: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                    iters: int = 10, w1: float = 0.3, w2: float = 0.01, kernel: Tensor | None = None,
                    return_steps: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """PAR on score maps of any resolution: resize them to the image, compute the kernel unless given,
    apply it.

    image: (B, 3, H, W) RGB 0-255. maps: (B, K, h, w), resized to (H, W) with bilinear,
    align_corners=True (as the spec and the authors). kernel: (B, N, H, W) ``par_kernel(image)``
    to reuse. Returns (B, K, H, W) (and the steps, see ``apply_par``).
    """
    size = image.shape[-2:]
    if maps.shape[-2:] != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
    if kernel is None:
        kernel = par_kernel(image, dilations, w1, w2)
    return apply_par(kernel, maps, dilations, iters, return_steps)
