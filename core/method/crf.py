"""Dense CRF post-processing of segmentation probabilities (spec section 6), via pydensecrf.

pydensecrf is optional: it is imported only when a CRF is actually run, so the rest of the
project works without it; :func:`crf_available` tells the caller beforehand.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

__all__ = ["crf_available", "dense_crf"]

_MISSING = "dense CRF needs the pydensecrf module: pip install pydensecrf2"
_PROB_FLOOR = 1e-8


def _import_densecrf() -> Any:
    try:
        return importlib.import_module("pydensecrf.densecrf")
    except ImportError as exc:
        raise RuntimeError(_MISSING) from exc


def crf_available() -> bool:
    """True when pydensecrf can be imported."""
    try:
        _import_densecrf()
    except RuntimeError:
        return False
    return True


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def dense_crf(
    image_uint8: Any,
    probs: Any,
    iters: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 64,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 4,
) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF (Krähenbühl and Koltun).

    image_uint8: ``(H, W, 3)`` RGB image, uint8 (NumPy array or tensor).
    probs: ``(C, H, W)`` class probabilities (NumPy array or tensor), e.g. the softmax of the
        segmentation logits. The unary energy is ``-log(max(probs, 1e-8))``.
    The keyword arguments are the names of ``cfg["infer"]["crf"]``, so
    ``dense_crf(image, probs, **cfg["infer"]["crf"])`` works: ``iters`` mean-field iterations, a
    Gaussian (smoothness) kernel and a bilateral (appearance) kernel with their Potts weights.

    Returns the ``(H, W)`` uint8 label map (argmax of the CRF marginals). Raises RuntimeError
    when pydensecrf is not installed.
    """
    densecrf = _import_densecrf()
    image = _to_numpy(image_uint8)
    probs = _to_numpy(probs)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) matching the image {image.shape[:2]}, got {probs.shape}")
    n_labels, height, width = probs.shape
    if n_labels > 256:
        raise ValueError(f"dense_crf returns uint8 labels and supports at most 256 classes, got {n_labels}")

    unary = -np.log(np.clip(probs.astype(np.float32), _PROB_FLOOR, None))
    unary = np.ascontiguousarray(unary.reshape(n_labels, height * width), dtype=np.float32)
    # pydensecrf takes writable buffers only; read_image's arrays are read-only: always copy
    rgb = np.array(image, dtype=np.uint8, order="C", copy=True)

    crf = densecrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=rgb, compat=bilateral_compat)
    marginals = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(n_labels, height, width)
    return marginals.argmax(axis=0).astype(np.uint8)
