"""PAR (core/method/par.py) against a naive per-pixel loop and an authors'-style re-implementation.

``reference_par_authors_style`` (below) is the straightforward formulation of the authors' code:
all neighbours gathered with one convolution per dilation into a (B, C, N, H, W) tensor, and the
kernel recomputed on every call. core/bench.py may import it to time our PAR against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from core.method.par import DEFAULT_DILATIONS, apply_par, par_kernel, par_offsets, refine_with_par

W1, W2 = 0.3, 0.01


# --- naive reference: explicit loops over pixels and neighbours, float64 -------------------------

def _offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(dy * d, dx * d) for d in dilations for dy, dx in ring]


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    e = [math.exp(v - top) for v in values]
    total = sum(e)
    return [v / total for v in e]


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def naive_kernel(image: np.ndarray, dilations: Sequence[int], w1: float = W1, w2: float = W2) -> np.ndarray:
    """image (3, H, W) float64 -> kernel (N, H, W)."""
    c, h, w = image.shape
    offs = _offsets(dilations)
    dist = [math.hypot(dy, dx) for dy, dx in offs]
    s_d = _std(dist)
    pos = _softmax([-((d / (s_d + 1e-8) / w1) ** 2) for d in dist])
    out = np.zeros((len(offs), h, w))
    for y in range(h):
        for x in range(w):
            neigh = [[image[ch, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)] for dy, dx in offs]
                     for ch in range(c)]
            stds = [_std(neigh[ch]) for ch in range(c)]
            app = []
            for j in range(len(offs)):
                terms = [-((abs(image[ch, y, x] - neigh[ch][j]) / (stds[ch] + 1e-8) / w1) ** 2)
                         for ch in range(c)]
                app.append(sum(terms) / c)
            soft = _softmax(app)
            for j in range(len(offs)):
                out[j, y, x] = soft[j] + w2 * pos[j]
    return out


def naive_apply(kernel: np.ndarray, maps: np.ndarray, dilations: Sequence[int], iters: int) -> np.ndarray:
    """kernel (N, H, W), maps (K, H, W) -> maps after ``iters`` iterations."""
    k, h, w = maps.shape
    offs = _offsets(dilations)
    for _ in range(iters):
        new = np.zeros_like(maps)
        for c in range(k):
            for y in range(h):
                for x in range(w):
                    new[c, y, x] = sum(
                        kernel[j, y, x] * maps[c, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
                        for j, (dy, dx) in enumerate(offs))
        maps = new
    return maps


# --- authors'-style reference: neighbours gathered by convolution, kernel recomputed per call ----

def _gather_by_conv(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """(B, C, H, W) -> (B, C, N, H, W): a one-hot 3x3 convolution per dilation on a replicate pad."""
    b, c, h, w = x.shape
    onehot = torch.zeros(8, 1, 3, 3, dtype=x.dtype, device=x.device)
    ring = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    for i, (dy, dx) in enumerate(ring):
        onehot[i, 0, dy, dx] = 1.0
    parts = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        parts.append(F.conv2d(padded, onehot, dilation=d).view(b, c, 8, h, w))
    return torch.cat(parts, dim=2)


def reference_par_authors_style(image: Tensor, maps: Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS,
                                iters: int = 10, w1: float = W1, w2: float = W2) -> Tensor:
    """PAR written as the authors do: image (B, 3, H, W) 0-255, maps (B, K, h, w) -> (B, K, H, W).

    Recomputes the kernel on every call and materialises every neighbour of every map.
    """
    maps = F.interpolate(maps, size=image.shape[-2:], mode="bilinear", align_corners=True)
    b, _, h, w = image.shape
    neigh = _gather_by_conv(image, dilations)
    diag = [math.sqrt(2.0) if dy and dx else 1.0 for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    dist = torch.tensor([f * d for d in dilations for f in diag], dtype=image.dtype, device=image.device)
    dist = dist.view(1, 1, -1, 1, 1).expand(b, 1, -1, h, w)
    app = -((neigh - image.unsqueeze(2)).abs() / (neigh.std(dim=2, keepdim=True) + 1e-8) / w1) ** 2
    pos = -(dist / (dist.std(dim=2, keepdim=True) + 1e-8) / w1) ** 2
    kernel = app.mean(dim=1, keepdim=True).softmax(dim=2) + w2 * pos.softmax(dim=2)
    for _ in range(iters):
        maps = (_gather_by_conv(maps, dilations) * kernel).sum(dim=2)
    return maps


def time_par_vs_authors(size: int = 256, map_sets: int = 4, channels: int = 3, iters: int = 10,
                        repeats: int = 3) -> dict[str, float]:
    """Seconds (best of ``repeats``) for PAR on one image with ``map_sets`` sets of score maps:
    ours (kernel once, one apply call) vs authors' style (one call per set). For core/bench.py."""
    import time

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=gen) * 255
    maps = torch.rand(1, map_sets * channels, size, size, generator=gen)

    def ours() -> None:
        apply_par(par_kernel(image), maps, iters=iters)

    def theirs() -> None:
        for s in range(map_sets):
            reference_par_authors_style(image, maps[:, s * channels:(s + 1) * channels], iters=iters)

    result = {}
    for name, fn in (("par_ours_s", ours), ("par_authors_style_s", theirs)):
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        result[name] = best
    result["speedup"] = result["par_authors_style_s"] / result["par_ours_s"]
    return result


# --- tests ---------------------------------------------------------------------------------------

@pytest.fixture
def image6() -> Tensor:
    return torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 255


@pytest.mark.parametrize("dilations", [(1, 2), DEFAULT_DILATIONS])
def test_kernel_and_iterations_match_naive_loops(image6: Tensor, dilations: tuple[int, ...]) -> None:
    ref_kernel = naive_kernel(image6[0].numpy(), dilations)
    maps = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_maps = naive_apply(ref_kernel, maps[0].numpy(), dilations, iters=3)
    for dtype in (torch.float64, torch.float32):
        kernel = par_kernel(image6.to(dtype), dilations, W1, W2)
        assert kernel.shape == (1, 8 * len(dilations), 6, 6)
        assert kernel.dtype == dtype
        np.testing.assert_allclose(kernel[0].double().numpy(), ref_kernel, atol=1e-5, rtol=0)
        out = apply_par(kernel, maps.to(dtype), dilations, iters=3)
        np.testing.assert_allclose(out[0].double().numpy(), ref_maps, atol=1e-5, rtol=0)


def test_matches_authors_style_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 40, 36, generator=gen) * 255
    maps = torch.rand(2, 3, 40, 36, generator=gen)
    ours = refine_with_par(image, maps)
    theirs = reference_par_authors_style(image, maps)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_kernel_sums_to_one_plus_w2(image6: Tensor) -> None:
    kernel = par_kernel(image6, DEFAULT_DILATIONS, W1, W2)
    torch.testing.assert_close(kernel.sum(1), torch.full((1, 6, 6), 1 + W2, dtype=torch.float64))
    assert (kernel > 0).all()


def test_constant_image_gives_uniform_appearance_plus_position_prior() -> None:
    # every difference is 0 (and s = 0, guarded by the 1e-8): the appearance softmax is uniform 1/N,
    # so the kernel is 1/N + w2 * softmax(position), the same at every pixel
    image = torch.full((1, 3, 7, 5), 80.0, dtype=torch.float64)
    dilations = (1, 2, 4)
    kernel = par_kernel(image, dilations, W1, W2)
    dist = [math.hypot(dy, dx) for dy, dx in _offsets(dilations)]
    pos = _softmax([-((d / (_std(dist) + 1e-8) / W1) ** 2) for d in dist])
    expected = torch.tensor([1 / len(dist) + W2 * p for p in pos], dtype=torch.float64)
    torch.testing.assert_close(kernel, expected.view(1, -1, 1, 1).expand_as(kernel))
    # nearer neighbours weigh more through the position term
    assert kernel[0, 0, 0, 0] < kernel[0, 1, 0, 0]  # (-1,-1) diagonal vs (-1,0)
    assert kernel[0, 1, 0, 0] > kernel[0, 9, 0, 0]  # dilation 1 vs dilation 2


def test_constant_map_stays_constant_scaled_by_one_plus_w2(image6: Tensor) -> None:
    kernel = par_kernel(image6)
    maps = torch.full((1, 2, 6, 6), 0.7, dtype=torch.float64)
    out = apply_par(kernel, maps, DEFAULT_DILATIONS, iters=4)
    torch.testing.assert_close(out, maps * (1 + W2) ** 4)


def test_return_steps(image6: Tensor) -> None:
    kernel = par_kernel(image6)
    maps = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    out, steps = apply_par(kernel, maps, DEFAULT_DILATIONS, iters=5, return_steps=True)
    assert steps.shape == (6, 1, 3, 6, 6)
    torch.testing.assert_close(steps[0], maps)
    torch.testing.assert_close(steps[-1], out)
    torch.testing.assert_close(steps[2], apply_par(kernel, maps, DEFAULT_DILATIONS, iters=2))
    out0, steps0 = apply_par(kernel, maps, DEFAULT_DILATIONS, iters=0, return_steps=True)
    assert steps0.shape == (1, 1, 3, 6, 6) and torch.equal(out0, maps)


def test_batch_equals_separate_calls_and_map_sets_are_independent() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 12, 10, generator=gen) * 255
    maps = torch.rand(2, 5, 12, 10, generator=gen)
    together = apply_par(par_kernel(images), maps)
    for i in range(2):
        alone = apply_par(par_kernel(images[i:i + 1]), maps[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone)
    kernel = par_kernel(images)
    torch.testing.assert_close(together[:, :2], apply_par(kernel, maps[:, :2]))
    torch.testing.assert_close(together[:, 2:], apply_par(kernel, maps[:, 2:]))


def test_refine_with_par_resizes_maps_align_corners_true() -> None:
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 16, 12, generator=gen) * 255
    small = torch.rand(1, 2, 4, 3, generator=gen)
    kernel = par_kernel(image)
    expected = apply_par(kernel, F.interpolate(small, size=(16, 12), mode="bilinear", align_corners=True))
    torch.testing.assert_close(refine_with_par(image, small), expected)
    torch.testing.assert_close(refine_with_par(image, small, kernel=kernel), expected)


def test_uint8_like_integer_image_and_bad_kernel() -> None:
    image = torch.randint(0, 256, (1, 3, 8, 8))
    kernel = par_kernel(image)
    assert kernel.dtype == torch.float32
    with pytest.raises(ValueError, match="neighbours"):
        apply_par(kernel, torch.rand(1, 2, 8, 8), dilations=(1, 2))
    assert len(par_offsets((1, 3))) == 16 and par_offsets((3,))[0] == (-3, -3)


def test_edges_stop_the_smoothing() -> None:
    # two flat halves: a score placed in the left half stays there after PAR
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 200.0
    image += torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    maps = torch.zeros(1, 1, 16, 16)
    maps[..., :8] = 1.0
    out = apply_par(par_kernel(image, (1, 2, 4)), maps, dilations=(1, 2, 4))
    assert out[..., :8].min() > 0.9 and out[..., 8:].max() < 0.05
