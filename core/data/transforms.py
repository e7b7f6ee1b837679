"""Training augmentation and evaluation transforms, producing the sample dict of the data contract.

Training (afa-spec.md, section 2): random resize of the long side in ``resize_range``, random
rescale in ``rescale_range``, horizontal flip, random crop to ``crop_size`` padded with ignore.
Both scale factors are drawn separately (as the spec describes them) but applied as one resize,
and the crop is sampled before resizing: only the ``crop_size`` x ``crop_size`` window is ever
computed (``cv2.warpAffine`` with the combined scale, flip and offset), so a 2048 px long side
times a rescale of 2 costs no more than any other sample. When the image shrinks, it is first
resized with area interpolation (no aliasing); when it grows, it is sampled bilinearly. Masks
always use nearest neighbour.

The crop is taken like the authors': the scaled image is placed at a random offset inside a canvas
of at least ``crop_size`` on each side, and a random ``crop_size`` window of that canvas is cut
out. Pixels of the window that are not image are padding:

- ``valid`` is False there (it is True exactly on the rectangle covered by the image);
- ``mask`` is ``ignore_index`` (255) there;
- ``image`` (normalised) is 0 there, which is the mean colour after normalisation;
- ``image_raw`` (0-255) is 0 there (black). Use ``valid`` to exclude padding, never its colour.

Randomness is a pure function of ``(seed, epoch, index)`` (``sample_rng``), so a resumed run sees
exactly the augmentation it would have seen without the interruption, whatever the number of
DataLoader workers.

Sample dict (docs/architecture.md, core/data): ``image`` float32 ``(3, H, W)`` normalised,
``image_raw`` float32 ``(3, H, W)`` on 0-255, ``cls_label`` float32 ``(C-1,)``, ``mask`` int64
``(H, W)`` (only when ground truth exists), ``valid`` bool ``(H, W)``, ``name`` str. The transforms
produce the image, mask and valid fields; the datasets add ``cls_label`` and ``name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample: a pure function of ``(seed, epoch, index)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


@dataclass(frozen=True)
class CropGeometry:
    """Where the scaled (and maybe flipped) image lands in the output crop.

    The scaled image has size ``(scaled_h, scaled_w)``; its top-left pixel is at ``(top, left)`` in
    the ``(crop, crop)`` output (negative when the crop starts inside the image).
    """

    scaled_h: int
    scaled_w: int
    top: int
    left: int
    crop: int
    flip: bool

    def valid_box(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the image inside the crop, end exclusive."""
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1 = min(self.top + self.scaled_h, self.crop)
        x1 = min(self.left + self.scaled_w, self.crop)
        return y0, y1, x0, x1


def draw_geometry(
    h: int,
    w: int,
    rng: np.random.Generator,
    crop_size: int,
    resize_range: Sequence[float] | None,
    rescale_range: Sequence[float] | None,
    flip: bool,
) -> CropGeometry:
    """Draw the augmentation of one ``(h, w)`` image: scale, flip and crop placement."""
    scale = 1.0
    if resize_range:
        long_side = int(rng.integers(int(resize_range[0]), int(resize_range[1]) + 1))
        scale *= long_side / max(h, w)
    if rescale_range:
        scale *= float(rng.uniform(float(rescale_range[0]), float(rescale_range[1])))
    do_flip = bool(rng.random() < 0.5) if flip else False
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    ph, pw = max(crop_size, sh), max(crop_size, sw)
    # place the image in the padded canvas, then cut a crop_size window out of the canvas
    top = int(rng.integers(0, ph - sh + 1)) - int(rng.integers(0, ph - crop_size + 1))
    left = int(rng.integers(0, pw - sw + 1)) - int(rng.integers(0, pw - crop_size + 1))
    return CropGeometry(sh, sw, top, left, crop_size, do_flip)


def _inverse_affine(geom: CropGeometry, src_h: int, src_w: int) -> np.ndarray:
    """The 2x3 map from output pixel (x, y) to source pixel, with cv2.resize's pixel-centre rule."""
    sy, sx = geom.scaled_h / src_h, geom.scaled_w / src_w
    if geom.flip:
        ax, bx = -1.0 / sx, (geom.scaled_w - 0.5 + geom.left) / sx - 0.5
    else:
        ax, bx = 1.0 / sx, (0.5 - geom.left) / sx - 0.5
    by = (0.5 - geom.top) / sy - 0.5
    return np.array([[ax, 0.0, bx], [0.0, 1.0 / sy, by]], dtype=np.float64)


def apply_geometry(
    rgb: np.ndarray, mask: np.ndarray | None, geom: CropGeometry, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Scale, flip and crop. ``rgb (H, W, 3)`` uint8, ``mask (H, W)`` uint8 or None ->
    ``(crop (S, S, 3) uint8 with 0 on padding, mask (S, S) uint8 with ignore on padding, valid (S, S))``.
    """
    h, w = rgb.shape[:2]
    size = (geom.crop, geom.crop)
    flags_inv = cv2.WARP_INVERSE_MAP
    src = rgb
    if geom.scaled_h < h or geom.scaled_w < w:
        # shrinking: area-resize first so that the warp below is a pure shift (no aliasing)
        src = cv2.resize(rgb, (geom.scaled_w, geom.scaled_h), interpolation=cv2.INTER_AREA)
    m_img = _inverse_affine(geom, src.shape[0], src.shape[1])
    out = cv2.warpAffine(
        src, m_img, size, flags=cv2.INTER_LINEAR | flags_inv, borderMode=cv2.BORDER_REPLICATE
    )
    valid = np.zeros(size, dtype=bool)
    y0, y1, x0, x1 = geom.valid_box()
    valid[y0:y1, x0:x1] = True
    out[~valid] = 0
    out_mask = None
    if mask is not None:
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match image shape {(h, w)}")
        m_mask = _inverse_affine(geom, h, w)
        out_mask = cv2.warpAffine(
            mask, m_mask, size, flags=cv2.INTER_NEAREST | flags_inv, borderMode=cv2.BORDER_REPLICATE
        )
        out_mask[~valid] = ignore_index
    return out, out_mask, valid


def _to_tensors(
    rgb: np.ndarray, mask: np.ndarray | None, valid: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> dict[str, torch.Tensor]:
    """``rgb (H, W, 3)`` uint8 (0 on padding) -> the image fields of the sample dict."""
    raw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()  # transpose as uint8: cheap
    norm = (raw - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]
    valid_t = torch.from_numpy(np.ascontiguousarray(valid))
    if not valid.all():
        raw *= valid_t
        norm *= valid_t
    out = {"image": norm, "image_raw": raw, "valid": valid_t}
    if mask is not None:
        out["mask"] = torch.from_numpy(mask.astype(np.int64))
    return out


class TrainTransform:
    """The training augmentation. ``__call__(rgb (H, W, 3) uint8, mask (H, W) uint8 | None, rng)``
    returns ``image``, ``image_raw`` ``(3, S, S)``, ``valid`` ``(S, S)`` and ``mask`` ``(S, S)``
    (when a mask was given), ``S = crop_size``."""

    def __init__(
        self,
        crop_size: int = 512,
        resize_range: Sequence[float] | None = (512, 2048),
        rescale_range: Sequence[float] | None = (0.5, 2.0),
        flip: bool = True,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        ignore_index: int = 255,
    ) -> None:
        if resize_range and not 0 < resize_range[0] <= resize_range[1]:
            raise ValueError(f"resize_range must be [low, high] with 0 < low <= high, got {resize_range}")
        if rescale_range and not 0 < rescale_range[0] <= rescale_range[1]:
            raise ValueError(f"rescale_range must be [low, high] with 0 < low <= high, got {rescale_range}")
        self.crop_size = int(crop_size)
        self.resize_range = list(resize_range) if resize_range else None
        self.rescale_range = list(rescale_range) if rescale_range else None
        self.flip = bool(flip)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.ignore_index = int(ignore_index)

    @classmethod
    def from_cfg(cls, data_cfg: dict[str, Any]) -> TrainTransform:
        return cls(
            crop_size=data_cfg["crop_size"],
            resize_range=data_cfg.get("resize_range"),
            rescale_range=data_cfg.get("rescale_range"),
            flip=data_cfg.get("flip", True),
            mean=data_cfg["mean"],
            std=data_cfg["std"],
            ignore_index=data_cfg.get("ignore_index", 255),
        )

    def __call__(
        self, rgb: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        geom = draw_geometry(
            rgb.shape[0], rgb.shape[1], rng, self.crop_size, self.resize_range, self.rescale_range, self.flip
        )
        crop, crop_mask, valid = apply_geometry(rgb, mask, geom, self.ignore_index)
        return _to_tensors(crop, crop_mask, valid, self.mean, self.std)


class EvalTransform:
    """No augmentation: the whole image, normalised; ``valid`` is all True. Same output fields as
    ``TrainTransform`` at the image's own size ``(H, W)``. ``rng`` is accepted and ignored."""

    def __init__(
        self,
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def from_cfg(cls, data_cfg: dict[str, Any]) -> EvalTransform:
        return cls(mean=data_cfg["mean"], std=data_cfg["std"])

    def __call__(
        self, rgb: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        if mask is not None and mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
        valid = np.ones(rgb.shape[:2], dtype=bool)
        return _to_tensors(rgb, mask, valid, self.mean, self.std)
