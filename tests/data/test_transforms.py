"""Training augmentation: crop box / valid, ignore padding, flip consistency, reproducibility."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from core.data.transforms import (
    CropGeometry,
    EvalTransform,
    TrainTransform,
    apply_geometry,
    draw_geometry,
    sample_rng,
)
from core.io import voc_palette

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def coded_pair(h: int = 48, w: int = 64, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A mask of class blocks and an image whose colour is the class's palette colour."""
    rng = np.random.default_rng(3)
    cells = rng.integers(1, 21, (h // block + 1, w // block + 1))
    mask = np.kron(cells, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
    return voc_palette()[mask], mask


def test_sample_rng_is_a_pure_function_of_seed_epoch_index() -> None:
    a = sample_rng(0, 3, 17).random(4)
    assert np.array_equal(a, sample_rng(0, 3, 17).random(4))
    assert not np.array_equal(a, sample_rng(0, 4, 17).random(4))
    assert not np.array_equal(a, sample_rng(1, 3, 17).random(4))
    assert not np.array_equal(a, sample_rng(0, 3, 18).random(4))


@pytest.mark.parametrize("seed", range(12))
def test_valid_is_the_crop_box_and_padding_is_ignored(seed: int) -> None:
    rgb, mask = coded_pair()
    t = TrainTransform(crop_size=64, resize_range=(40, 120), rescale_range=(0.5, 2.0), mean=MEAN, std=STD)
    out = t(rgb, mask, sample_rng(seed, 0, 0))
    valid, m = out["valid"].numpy(), out["mask"].numpy()
    assert out["image"].shape == out["image_raw"].shape == (3, 64, 64)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
    assert valid.dtype == bool and valid.any()
    ys, xs = np.nonzero(valid)
    box = np.zeros_like(valid)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert np.array_equal(valid, box), "valid must be one rectangle"
    assert (m[~valid] == 255).all() and (m[valid] != 255).all()  # the source mask has no 255
    assert (out["image_raw"].numpy()[:, ~valid] == 0).all()
    assert (out["image"].numpy()[:, ~valid] == 0).all()


def test_geometry_box_matches_the_scaled_size() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = draw_geometry(30, 50, rng, 64, None, (0.5, 3.0), True)
        y0, y1, x0, x1 = g.valid_box()
        for size, (start, stop) in ((g.scaled_h, (y0, y1)), (g.scaled_w, (x0, x1))):
            if size <= 64:
                assert stop - start == size  # the whole scaled image, padded around
            else:
                assert (start, stop) == (0, 64)  # a crop of it: no padding


@pytest.mark.parametrize("flip", [False, True])
def test_scale_one_is_an_exact_shifted_copy(flip: bool) -> None:
    rgb, mask = coded_pair(20, 30)
    g = CropGeometry(scaled_h=20, scaled_w=30, top=5, left=-4, crop=32, flip=flip)
    crop, cmask, valid = apply_geometry(rgb, mask, g)
    src, msrc = (rgb[:, ::-1], mask[:, ::-1]) if flip else (rgb, mask)
    # output rows 5..24 hold source rows 0..19; output cols 0..25 hold source cols 4..29
    assert np.array_equal(crop[5:25, 0:26], src[:, 4:30])
    assert np.array_equal(cmask[5:25, 0:26], msrc[:, 4:30])
    assert valid[5:25, 0:26].all() and valid.sum() == 20 * 26


@pytest.mark.parametrize("seed", range(8))
def test_flip_and_scale_keep_image_and_mask_aligned(seed: int) -> None:
    rgb, mask = coded_pair()
    palette = voc_palette().astype(np.float32)
    t = TrainTransform(crop_size=64, resize_range=None, rescale_range=(0.6, 2.5), mean=MEAN, std=STD)
    rng = sample_rng(seed, 0, 0)
    out = t(rgb, mask, rng)
    raw = out["image_raw"].numpy().transpose(1, 2, 0)
    m, valid = out["mask"].numpy(), out["valid"].numpy()
    err = np.abs(raw - palette[np.where(valid, m, 0)]).sum(-1)
    # resampling mixes colours along block edges: compare where the 3x3 neighbourhood is one class
    m8, k = m.astype(np.uint8), np.ones((3, 3), np.uint8)
    interior = (cv2.erode(m8, k) == cv2.dilate(m8, k)) & cv2.erode(valid.astype(np.uint8), k).astype(bool)
    assert interior.sum() > 500
    assert (err[interior] < 30).mean() > 0.99


def test_flip_really_flips() -> None:
    rgb, mask = coded_pair(32, 32)
    base = CropGeometry(32, 32, 0, 0, 32, False)
    a_img, a_mask, _ = apply_geometry(rgb, mask, base)
    b_img, b_mask, _ = apply_geometry(rgb, mask, dataclasses.replace(base, flip=True))
    assert np.array_equal(b_img, a_img[:, ::-1]) and np.array_equal(b_mask, a_mask[:, ::-1])


def test_normalisation_and_reproducibility() -> None:
    rgb, mask = coded_pair()
    t = TrainTransform(crop_size=32, resize_range=(48, 96), rescale_range=(0.5, 2.0), mean=MEAN, std=STD)
    a = t(rgb, mask, sample_rng(5, 2, 9))
    b = t(rgb, mask, sample_rng(5, 2, 9))
    for key in ("image", "image_raw", "mask", "valid"):
        assert torch.equal(a[key], b[key])
    v = a["valid"]
    expected = (a["image_raw"] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(a["image"][:, v], expected[:, v], atol=1e-5)
    outs = [t(rgb, mask, sample_rng(5, e, 9))["image_raw"] for e in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_without_mask_and_large_upscale_is_cheap_and_correct() -> None:
    rgb, _ = coded_pair(40, 60)
    t = TrainTransform(crop_size=64, resize_range=(512, 2048), rescale_range=(0.5, 2.0), mean=MEAN, std=STD)
    out = t(rgb, None, sample_rng(0, 0, 0))
    assert "mask" not in out and out["valid"].all()  # a 512+ px image always fills the crop


def test_eval_transform_keeps_the_whole_image() -> None:
    rgb, mask = coded_pair(30, 40)
    out = EvalTransform(MEAN, STD)(rgb, mask)
    assert out["image"].shape == (3, 30, 40) and out["valid"].all()
    assert torch.equal(out["mask"], torch.from_numpy(mask.astype(np.int64)))
    assert torch.equal(out["image_raw"], torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1))


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="rescale_range"):
        TrainTransform(rescale_range=(2.0, 0.5))


def reference_crop(rgb: np.ndarray, mask: np.ndarray, g: CropGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The slow, obvious version: resize everything, flip, paste into a padded canvas."""
    interp = cv2.INTER_AREA if g.scaled_h < rgb.shape[0] else cv2.INTER_LINEAR
    img = cv2.resize(rgb, (g.scaled_w, g.scaled_h), interpolation=interp)
    msk = cv2.resize(mask, (g.scaled_w, g.scaled_h), interpolation=cv2.INTER_NEAREST_EXACT)
    if g.flip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    out_img = np.zeros((g.crop, g.crop, 3), np.uint8)
    out_msk = np.full((g.crop, g.crop), 255, np.uint8)
    y0, y1, x0, x1 = g.valid_box()
    out_img[y0:y1, x0:x1] = img[y0 - g.top : y1 - g.top, x0 - g.left : x1 - g.left]
    out_msk[y0:y1, x0:x1] = msk[y0 - g.top : y1 - g.top, x0 - g.left : x1 - g.left]
    return out_img, out_msk


@pytest.mark.parametrize("seed", range(10))
def test_matches_the_obvious_resize_flip_crop(seed: int) -> None:
    rgb, mask = coded_pair()
    g = draw_geometry(48, 64, np.random.default_rng(seed), 64, None, (0.5, 2.5), True)
    crop, cmask, _ = apply_geometry(rgb, mask, g)
    ref_img, ref_mask = reference_crop(rgb, mask, g)
    # nearest-neighbour ties (source position exactly .5) may round either way; a shift by one
    # pixel would disagree on ~20% of the pixels
    assert (cmask != ref_mask).mean() < 0.05
    assert np.abs(crop.astype(int) - ref_img.astype(int)).max() <= 2  # fixed-point interpolation
