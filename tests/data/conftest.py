"""Fixtures for the data tests: tiny VOC / COCO folders made on the fly, a small data config."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DEFAULTS
from core.io import voc_palette


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95)


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8))
    img.putpalette(voc_palette().ravel().tolist())
    img.save(path)


def block_mask(h: int, w: int, classes: list[int], seed: int) -> np.ndarray:
    """A mask with one rectangle per class on background, and a 255 border around each."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for c in classes:
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + h // 3, x0 + w // 3
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = c
    return mask


def write_split(root: Path, rel: str, names: list[str]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(n + "\n" for n in names))


# name -> classes in its mask
VOC_ITEMS = {
    "2007_000001": [1, 15],
    "2007_000002": [7],
    "2007_000003": [12, 15],
    "2007_000004": [20],
    "2007_000005": [3],
}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC layout: train (001, 002), train_aug (001, 002, 005), val (003, 004)."""
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    for i, (name, classes) in enumerate(VOC_ITEMS.items()):
        h, w = 40 + 4 * i, 56 - 2 * i
        save_jpeg(root / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = block_mask(h, w, classes, seed=i)
        save_mask(root / "SegmentationClassAug" / f"{name}.png", mask)
        if name != "2007_000005":
            save_mask(root / "SegmentationClass" / f"{name}.png", mask)
    write_split(root, "ImageSets/Segmentation/train.txt", ["2007_000001", "2007_000002"])
    write_split(root, "ImageSets/Segmentation/train_aug.txt", ["2007_000001", "2007_000002", "2007_000005"])
    write_split(root, "ImageSets/Segmentation/val.txt", ["2007_000003", "2007_000004"])
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """COCO in VOC layout with train2014 / val2014 folders and lists at ROOT/ImageSets."""
    root = tmp_path / "coco"
    rng = np.random.default_rng(1)
    items = {
        "train": {"COCO_train2014_000000000009": [1, 80], "COCO_train2014_000000000025": [24]},
        "val": {"COCO_val2014_000000000042": [18, 62]},
    }
    for split, entries in items.items():
        for i, (name, classes) in enumerate(entries.items()):
            save_jpeg(
                root / "JPEGImages" / f"{split}2014" / f"{name}.jpg",
                rng.integers(0, 256, (36, 48, 3), np.uint8),
            )
            save_mask(
                root / "SegmentationClass" / f"{split}2014" / f"{name}.png", block_mask(36, 48, classes, i)
            )
        write_split(root, f"ImageSets/{split}.txt", list(entries))
    return root


@pytest.fixture
def cfg() -> dict:
    """Defaults with a small crop (tests run on tiny images)."""
    c = copy.deepcopy(DEFAULTS)
    c["data"].update(crop_size=32, resize_range=None, rescale_range=[0.5, 1.5])
    return c


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))
