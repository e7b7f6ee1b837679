"""The offline "scenes" benchmark: multi-object images with exact masks, in VOC layout.

Each image holds 1-3 Fashion-MNIST items, enlarged, coloured and placed with partial occlusion
on a non-trivial background (smooth colour fields, texture noise and class-free clutter). The
masks are exact because we draw the images: a pixel belongs to the class that makes up most of
its colour; where no class makes up at least ``IGNORE_WEIGHT`` of it (the 1-2 px soft edge of
an item, where its alpha is ambiguous), the mask says 255 (ignore), like VOC's boundary band.

Usage::

    python -m core.data.scenes --out data/scenes --seed 0 --train 2000 --val 300 --size 256 [--workers 2]
    python -m core.data.scenes --out /tmp/tiny --source procedural --train 8 --val 4

Output (VOC layout, read by ``core.data.ScenesDataset``)::

    DIR/JPEGImages/NAME.jpg                 RGB, JPEG quality 95
    DIR/SegmentationClass/NAME.png          palette PNG of class ids, 255 = ignore
    DIR/ImageSets/Segmentation/train.txt, val.txt
    DIR/cls_labels.json                     {NAME: [class ids]}
    DIR/classes.txt                         background + 10 classes, one a line
    DIR/items.json                          {NAME: per-item records (source split and index, class,
                                            box, scale, visible fraction, labelled pixels), clutter}
    DIR/meta.json                           all options, seed, version, source

Train images use the TRAIN split of the item source and val images its TEST split, so no item is
in both. An image's label lists the classes present in its mask; every placed item's class has at
least ``min_pixels`` labelled pixels (a layout where one would not is drawn again), so masks and
labels always agree and no label is empty. Each item keeps at least ``1 - occlusion`` of itself
visible (later items are placed only where they do not hide more). Generation is a pure
function of ``(seed, split, index)``: the same seed gives the same bytes.

Item source: Fashion-MNIST idx files (gz or raw) from ``--source DIR`` (also ``DIR/FashionMNIST/raw``),
else Debian's ``/usr/share/datasets/fashion-mnist`` (package dataset-fashion-mnist), else
``data/FashionMNIST/raw`` (torchvision's layout); ``--source procedural`` uses ``ProceduralSprites``,
ten simple shapes drawn with OpenCV, which needs no files (for tests).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.io import voc_palette

VERSION = 1
SPRITE_SIZE = 28
IGNORE_WEIGHT = 0.85  # a pixel is labelled only if one class makes up >= 85% of its colour
ALPHA_LOW, ALPHA_HIGH = 12.0, 45.0  # item intensity -> alpha ramp (0..255 scale)
SOLID_ALPHA = 0.5  # an item "covers" a pixel (for occlusion and visibility) where alpha >= 0.5
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_DIR = Path("data/FashionMNIST/raw")
FASHION_CLASSES = [
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
]
PROCEDURAL_CLASSES = [
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "cross",
    "star",
    "bar",
    "diamond",
    "crescent",
]
_SPLIT_CODE = {"train": 0, "val": 1}
_HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist, files in "
    f"{DEBIAN_DIR}), or run torchvision.datasets.FashionMNIST('DIR', download=True) on a machine with "
    "network and pass --source DIR; --source procedural needs no files"
)


# --------------------------------------------------------------------------------------------
# Item sources
# --------------------------------------------------------------------------------------------


@dataclass
class SpriteSet:
    """Grayscale items ``images (N, 28, 28)`` uint8 (0 = empty) with ``labels (N,)`` in 0..9."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str  # "fashion-mnist" | "procedural"
    split: str  # "train" | "test"


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, optionally gzipped) as a numpy array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(source: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST idx files; a clear error when there is none."""
    if source is not None:
        base = Path(source)
        candidates = [base, base / "FashionMNIST" / "raw", base / "raw"]
    else:
        candidates = [DEBIAN_DIR, TORCHVISION_DIR]
    stems = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    for folder in candidates:
        if all(_idx_file(folder, s) is not None for s in stems):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"Fashion-MNIST idx files not found (looked in {looked}); {_HOW_TO_GET}")


def load_fashion_mnist(folder: Path, split: str) -> SpriteSet:
    """Fashion-MNIST ``split`` ("train" 60k or "test" 10k) from a folder of idx files."""
    prefix = "train" if split == "train" else "t10k"
    img_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    lbl_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        raise FileNotFoundError(f"{folder} lacks the Fashion-MNIST {split} files; {_HOW_TO_GET}")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (SPRITE_SIZE, SPRITE_SIZE) or labels.shape != images.shape[:1]:
        raise ValueError(f"{folder}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
    return SpriteSet(images, labels.astype(np.int64), list(FASHION_CLASSES), "fashion-mnist", split)


class ProceduralSprites:
    """Ten simple shape classes drawn with OpenCV at 28x28, deterministic for a seed.

    Each sprite varies in size, position, rotation, brightness and inner shading, like the items
    of Fashion-MNIST do. The train and test splits use different random streams.
    """

    class_names = PROCEDURAL_CLASSES

    def __init__(self, n_train: int = 1000, n_test: int = 300, seed: int = 0) -> None:
        self.sizes = {"train": n_train, "test": n_test}
        self.seed = seed

    def split(self, split: str) -> SpriteSet:
        n = self.sizes[split]
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1, 7])
        labels = np.arange(n, dtype=np.int64) % 10
        images = np.stack([self.draw(int(c), rng) for c in labels])
        return SpriteSet(images, labels, list(PROCEDURAL_CLASSES), "procedural", split)

    @staticmethod
    def draw(cls: int, rng: np.random.Generator) -> np.ndarray:
        """One ``(28, 28)`` uint8 sprite of class ``cls`` (drawn at 4x, area-downsampled)."""
        big = 4 * SPRITE_SIZE
        canvas = np.zeros((big, big), np.uint8)
        cx, cy = (big / 2 + rng.uniform(-6, 6) for _ in range(2))
        r = rng.uniform(32, 46)
        ang = rng.uniform(-0.3, 0.3)
        val = int(rng.integers(170, 256))

        def poly(points: list[tuple[float, float]]) -> np.ndarray:
            c, s = np.cos(ang), np.sin(ang)
            pts = [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]
            return np.round(np.array(pts) * 16).astype(np.int32)

        def fill(points: list[tuple[float, float]]) -> None:
            cv2.fillPoly(canvas, [poly(points)], val, cv2.LINE_AA, shift=4)

        centre = (round(cx * 16), round(cy * 16))
        if cls == 0:  # disk
            cv2.circle(canvas, centre, round(r * 16), val, -1, cv2.LINE_AA, shift=4)
        elif cls == 1:  # square
            fill([(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)])
        elif cls == 2:  # triangle
            fill([(0, -r), (r * 0.95, r * 0.75), (-r * 0.95, r * 0.75)])
        elif cls == 3:  # ring
            cv2.circle(canvas, centre, round(r * 0.8 * 16), val, round(r * 0.35), cv2.LINE_AA, shift=4)
        elif cls == 4:  # plus
            t = r * 0.3
            fill([(-r, -t), (r, -t), (r, t), (-r, t)])
            fill([(-t, -r), (t, -r), (t, r), (-t, r)])
        elif cls == 5:  # cross (x)
            t, d = r * 0.22, r * 0.75
            fill([(-d - t, -d + t), (-d + t, -d - t), (d + t, d - t), (d - t, d + t)])
            fill([(d - t, -d - t), (d + t, -d + t), (-d + t, d + t), (-d - t, d - t)])
        elif cls == 6:  # star
            pts = []
            for k in range(10):
                rad = r if k % 2 == 0 else r * 0.45
                a = -np.pi / 2 + k * np.pi / 5
                pts.append((rad * np.cos(a), rad * np.sin(a)))
            fill(pts)
        elif cls == 7:  # bar
            fill([(-r, -r * 0.28), (r, -r * 0.28), (r, r * 0.28), (-r, r * 0.28)])
        elif cls == 8:  # diamond
            fill([(0, -r), (r * 0.6, 0), (0, r), (-r * 0.6, 0)])
        else:  # crescent
            cv2.circle(canvas, centre, round(r * 0.9 * 16), val, -1, cv2.LINE_AA, shift=4)
            off = (round((cx + r * 0.45) * 16), round((cy - r * 0.2) * 16))
            cv2.circle(canvas, off, round(r * 0.75 * 16), 0, -1, cv2.LINE_AA, shift=4)
        small = cv2.resize(canvas, (SPRITE_SIZE, SPRITE_SIZE), interpolation=cv2.INTER_AREA)
        # inner shading: a soft wave, so items have internal structure as clothes do
        ramp = np.arange(SPRITE_SIZE, dtype=np.float32) / SPRITE_SIZE
        wave = 3 * (ramp[None, :] * rng.uniform(-1, 1) + ramp[:, None]) + rng.uniform(0, 2 * np.pi)
        return (small * (0.75 + 0.25 * np.cos(wave))).astype(np.uint8)


def load_source(source: str | Path | None, split: str, seed: int = 0) -> SpriteSet:
    """Items of ``split`` ("train" | "test"): ``source`` "procedural", a folder, or None (default)."""
    if source is not None and str(source) == "procedural":
        return ProceduralSprites(seed=seed).split(split)
    return load_fashion_mnist(find_fashion_mnist(source), split)


# --------------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------------


@dataclass
class SceneOptions:
    """Every knob of the generator (written to meta.json)."""

    size: int = 256
    min_objects: int = 1
    max_objects: int = 3
    scale_min: float = 2.5  # item enlargement (28 px -> 70..140 px)
    scale_max: float = 5.0
    clutter: float = 0.5  # clutter density: about 16 x clutter class-free shapes per image
    occlusion: float = 0.6  # an item may be hidden by later items up to this fraction
    min_pixels: int = 120  # labelled pixels a class needs to count in the image label
    texture: float = 0.5  # probability that an item gets a gradient / pattern fill
    max_rotation: float = 20.0  # degrees
    quality: int = 95  # JPEG quality

    def validate(self) -> None:
        if not (0 <= self.min_objects <= self.max_objects and self.max_objects >= 1):
            raise ValueError("need 0 <= min_objects <= max_objects and max_objects >= 1")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("need 0 < scale_min <= scale_max")
        if SPRITE_SIZE * self.scale_max * 1.3 > self.size:
            raise ValueError(f"items enlarged {self.scale_max}x do not fit in {self.size}px images")
        if not 0.0 <= self.occlusion < 1.0:
            raise ValueError("occlusion must be in [0, 1)")
        if self.clutter < 0:
            raise ValueError("clutter must be >= 0")


@dataclass
class Scene:
    """One generated image. ``image (S, S, 3)`` uint8 RGB, ``mask (S, S)`` uint8 class ids with 255
    ignore, ``instances (S, S)`` int16 top-most item (1-based; 0 none) where an item's alpha >= 0.5,
    ``clutter (S, S)`` bool where clutter was drawn, ``items`` per-item records."""

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    clutter: np.ndarray
    items: list[dict[str, Any]] = field(default_factory=list)

    def labels(self) -> list[int]:
        ids = np.unique(self.mask)
        return [int(c) for c in ids if c not in (0, 255)]


def _random_colour(
    rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells x cells`` grid upsampled bicubically
    to 1/4 of the size (where bicubic is cheap), then bilinearly (smooth enough at that point)."""
    grid = rng.uniform(-1, 1, (cells, cells, channels)).astype(np.float32)
    mid = max(cells * 4, size // 4)
    out = cv2.resize(grid, (mid, mid), interpolation=cv2.INTER_CUBIC)
    out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    return out.reshape(size, size, channels)


def _grain(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean uniform noise of standard deviation ``sigma`` (uniform is 4x cheaper than normal)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * (sigma * 12**0.5)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field with texture: ``(S, S, 3)`` float32 in about 0..255.

    The colour part (a gradient between two colours plus low-frequency colour noise) is built at
    1/4 resolution and upsampled bilinearly (exact for the gradient, smooth for the noise); the
    texture part (mottling or stripes, plus grain) is one luminance channel at full resolution.
    """
    low = max(8, size // 4)
    coords = (np.arange(low, dtype=np.float32) + 0.5) / low - 0.5
    xx, yy = coords[None, :], coords[:, None]
    c0 = _random_colour(rng, (0.1, 0.8), (0.25, 0.95))
    c1 = _random_colour(rng, (0.1, 0.8), (0.25, 0.95))
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(theta) * xx + np.sin(theta) * yy) * rng.uniform(0.5, 1.5), 0, 1)
    colour = c0 + (c1 - c0) * t[..., None]
    colour += _smooth_noise(rng, low, int(rng.integers(2, 6))) * rng.uniform(15, 50)
    colour = cv2.resize(colour, (size, size), interpolation=cv2.INTER_LINEAR)

    lum = _grain(rng, (size, size), rng.uniform(2, 7))
    kind = rng.random()
    if kind < 0.45:  # mottled texture at a medium scale
        lum += _smooth_noise(rng, size, int(rng.integers(12, 40)), 1)[..., 0] * rng.uniform(8, 25)
    elif kind < 0.65:  # soft stripes
        f = rng.uniform(6, 20)
        phi = rng.uniform(0, np.pi)
        full = (np.arange(size, dtype=np.float32) + 0.5) / size
        phase = (2 * np.pi * f) * (np.cos(phi) * full[None, :] + np.sin(phi) * full[:, None])
        lum += np.sin(phase) * rng.uniform(6, 18)
    colour += lum[..., None]
    return colour


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, drawn: np.ndarray, count: int) -> None:
    """Draw ``count`` class-free shapes (strokes, circles, rectangles, ellipses, blobs) in place on
    ``image (S, S, 3)`` uint8; mark them in ``drawn (S, S)`` uint8."""
    size = image.shape[0]
    for _ in range(count):
        colour = tuple(float(v) for v in _random_colour(rng, (0.0, 0.9), (0.1, 1.0)))
        kind = int(rng.integers(0, 6))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        layers: list[tuple[np.ndarray, Any]] = [(image, colour), (drawn, 255)]
        if kind == 0:  # a stroke of a few segments
            n = int(rng.integers(2, 6))
            steps = rng.normal(0, size * 0.12, (n, 2)).cumsum(0)
            pts = np.round(np.array([x, y]) + steps).astype(np.int32)
            thick = int(rng.integers(1, 6))
            for img, col in layers:
                cv2.polylines(img, [pts], False, col, thick, cv2.LINE_AA)
        elif kind == 1:  # circle, filled or outlined
            r = int(rng.integers(4, size // 6))
            thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 5))
            for img, col in layers:
                cv2.circle(img, (x, y), r, col, thick, cv2.LINE_AA)
        elif kind == 2:  # rectangle
            w, h = (int(v) for v in rng.integers(6, size // 4, 2))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
            for img, col in layers:
                cv2.rectangle(img, (x, y), (x + w, y + h), col, thick, cv2.LINE_AA)
        elif kind == 3:  # ellipse
            axes = tuple(int(v) for v in rng.integers(4, size // 7, 2))
            ang = float(rng.uniform(0, 180))
            thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
            for img, col in layers:
                cv2.ellipse(img, (x, y), axes, ang, 0, 360, col, thick, cv2.LINE_AA)
        else:  # a blob: a smooth random polygon of item size
            n = int(rng.integers(6, 12))
            base = rng.uniform(8, size * 0.14)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = base * rng.uniform(0.5, 1.3, n)
            pts = np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], 1)
            pts = np.round(pts).astype(np.int32)
            for img, col in layers:
                cv2.fillPoly(img, [pts], col, cv2.LINE_AA)


def _fill_small_holes(sprite: np.ndarray, max_hole: int = 6, level: float = 40.0) -> np.ndarray:
    """Raise enclosed dark specks (at most ``max_hole`` source pixels) to ``level``: they are dark
    prints on the item, not holes through it. Larger enclosed gaps (sandal straps) stay open."""
    empty = (sprite <= ALPHA_LOW).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(empty, connectivity=4)
    out = sprite.astype(np.float32)
    border = set(np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]])).tolist())
    for k in range(1, n):
        if k not in border and stats[k, cv2.CC_STAT_AREA] <= max_hole:
            out[comp == k] = np.maximum(out[comp == k], level)
    return out


def _item_alpha(sprite: np.ndarray, scale: float, angle: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Enlarge, flip and rotate a 28x28 item. Returns ``(alpha, intensity)`` float32 ``(h, w)``
    cropped to the item: alpha from the item's intensity (threshold with a soft edge)."""
    side = max(8, round(SPRITE_SIZE * scale))
    pad = side // 2
    big = cv2.resize(_fill_small_holes(sprite), (side, side), interpolation=cv2.INTER_CUBIC)
    big = np.clip(big, 0, 255)
    if flip:
        big = big[:, ::-1]
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    if angle:
        c = big.shape[0] / 2
        rot = cv2.getRotationMatrix2D((c, c), angle, 1.0)
        big = cv2.warpAffine(big, rot, big.shape[::-1], flags=cv2.INTER_LINEAR, borderValue=0)
    # intensity ALPHA_LOW -> alpha 0 ... ALPHA_HIGH -> alpha 1, smoothstep between: a soft 1-2 px edge
    t = np.clip((big - ALPHA_LOW) / (ALPHA_HIGH - ALPHA_LOW), 0.0, 1.0)
    alpha = t * t * (3.0 - 2.0 * t)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    ys, xs = np.nonzero(alpha > 0.02)
    if ys.size == 0:
        return np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return alpha[y0:y1, x0:x1].copy(), big[y0:y1, x0:x1].copy()


def _item_fill(
    rng: np.random.Generator, intensity: np.ndarray, colour: np.ndarray, texture_prob: float
) -> np.ndarray:
    """The colours of an item ``(h, w, 3)`` float32: its colour shaded by the item's own intensity
    (so folds, prints and seams stay visible), optionally with a gradient or a pattern."""
    h, w = intensity.shape
    shade = 0.45 + 0.55 * np.clip(intensity / 255.0, 0, 1)
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if rng.random() < texture_prob:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        kind = rng.random()
        second = colour * rng.uniform(0.4, 0.8) + rng.uniform(0, 255, 3) * 0.4
        if kind < 0.5:  # gradient to a second colour
            theta = rng.uniform(0, 2 * np.pi)
            t = np.cos(theta) * xx / max(w, 1) + np.sin(theta) * yy / max(h, 1)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
            fill = fill * (1 - t[..., None]) + second * t[..., None]
        elif kind < 0.8:  # stripes
            period = rng.uniform(6, 16)
            phi = rng.uniform(0, np.pi)
            s = (np.sin(2 * np.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period) > 0).astype(np.float32)
            s = cv2.GaussianBlur(s, (0, 0), 0.8)[..., None]
            fill = fill * (1 - 0.6 * s) + second * 0.6 * s
        else:  # dots
            spots = (rng.random((h, w)) < 0.04).astype(np.float32)
            spots = cv2.GaussianBlur(spots, (0, 0), 1.5)
            spots = np.clip(spots / max(float(spots.max()), 1e-6), 0, 1)[..., None]
            fill = fill * (1 - spots) + second * spots
    return fill * shade[..., None]


@dataclass
class _Placed:
    alpha: np.ndarray
    intensity: np.ndarray
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    cls: int
    record: dict[str, Any]


def _try_place(
    rng: np.random.Generator,
    sprites: SpriteSet,
    opts: SceneOptions,
    instances: np.ndarray,
    areas: list[int],
    tries: int = 25,
) -> _Placed | None:
    """Draw an item and a position where no earlier item loses more than ``opts.occlusion`` of
    itself (nor falls under ``min_pixels``). Updates nothing; returns None after ``tries``."""
    size = opts.size
    for _ in range(tries):
        idx = int(rng.integers(0, len(sprites.images)))
        scale = float(rng.uniform(opts.scale_min, opts.scale_max))
        angle = float(rng.uniform(-opts.max_rotation, opts.max_rotation))
        flip = bool(rng.random() < 0.5)
        alpha, intensity = _item_alpha(sprites.images[idx], scale, angle, flip)
        h, w = alpha.shape
        solid = alpha >= SOLID_ALPHA
        area = int(solid.sum())
        if h >= size or w >= size or area < opts.min_pixels:
            continue
        y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        under = instances[y0 : y0 + h, x0 : x0 + w][solid]
        ok = True
        for k, item_area in enumerate(areas, start=1):
            visible_now = int((instances == k).sum())
            visible_after = visible_now - int((under == k).sum())
            if visible_after < (1.0 - opts.occlusion) * item_area or visible_after < opts.min_pixels:
                ok = False
                break
        if not ok:
            continue
        record = {
            "source_split": sprites.split,
            "source_index": idx,
            "class": int(sprites.labels[idx]) + 1,
            "scale": round(scale, 4),
            "angle": round(angle, 3),
            "flip": flip,
            "box": [x0, y0, x0 + w, y0 + h],
            "area": area,
        }
        return _Placed(alpha, intensity, (y0, y0 + h, x0, x0 + w), int(sprites.labels[idx]) + 1, record)
    return None


def generate_scene(
    sprites: SpriteSet, rng: np.random.Generator, opts: SceneOptions, tries: int = 30
) -> Scene:
    """One scene: background, clutter, then items (later over earlier), with its exact mask.

    A scene is accepted when at least ``min_objects`` items fit and every item's class keeps at
    least ``min_pixels`` labelled pixels (so no image has an empty label and every placed item is
    named in it); otherwise it is drawn again from the same generator (still deterministic).
    """
    for _ in range(tries):
        scene = _compose_scene(sprites, rng, opts)
        if len(scene.items) >= opts.min_objects and all(
            r["class_pixels"] >= opts.min_pixels for r in scene.items
        ):
            return scene
    raise ValueError(
        f"could not place {opts.min_objects} item(s) with {opts.min_pixels} labelled pixels each in "
        f"{tries} tries: lower --min-pixels or --min-objects, or raise --size / --scale-min"
    )


def _compose_scene(sprites: SpriteSet, rng: np.random.Generator, opts: SceneOptions) -> Scene:
    size = opts.size
    bg = _background(rng, size)
    image = np.clip(bg, 0, 255).astype(np.uint8)
    clutter = np.zeros((size, size), np.uint8)
    _draw_clutter(rng, image, clutter, int(rng.poisson(16 * opts.clutter)))

    n_items = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    placed: list[_Placed] = []
    instances = np.zeros((size, size), np.int16)
    areas: list[int] = []
    for _ in range(50):  # retry whole layouts when fewer than min_objects fit
        placed, areas = [], []
        instances[:] = 0
        for _ in range(n_items):
            item = _try_place(rng, sprites, opts, instances, areas)
            if item is None:
                continue
            placed.append(item)
            areas.append(item.record["area"])
            y0, y1, x0, x1 = item.box
            region = instances[y0:y1, x0:x1]
            region[item.alpha >= SOLID_ALPHA] = len(placed)
        if len(placed) >= opts.min_objects:
            break

    # composite; track each layer's share of every pixel's colour for the mask
    canvas = image.astype(np.float32)
    share = np.zeros((len(placed) + 1, size, size), np.float32)
    share[0] = 1.0
    for layer, item in enumerate(placed, start=1):
        y0, y1, x0, x1 = item.box
        local = canvas[y0:y1, x0:x1]
        colour = _random_colour(rng, (0.35, 1.0), (0.45, 1.0))
        for _ in range(6):  # keep the item distinguishable from what lies under it
            if np.abs(local.reshape(-1, 3).mean(0) - colour).sum() > 90:
                break
            colour = _random_colour(rng, (0.35, 1.0), (0.45, 1.0))
        fill = _item_fill(rng, item.intensity, colour, opts.texture)
        a = item.alpha[..., None]
        canvas[y0:y1, x0:x1] = local * (1 - a) + fill * a
        share[:, y0:y1, x0:x1] *= 1 - item.alpha
        share[layer, y0:y1, x0:x1] += item.alpha
    canvas += _grain(rng, (size, size, 3), 1.5)  # sensor-like grain over everything
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    # per class (items of one class add up), then the class with the largest share, if clear
    class_ids = [0, *sorted({p.cls for p in placed})]
    layers_of = {c: [i + 1 for i, p in enumerate(placed) if p.cls == c] for c in class_ids[1:]}
    class_share = np.stack([share[0]] + [share[layers_of[c]].sum(0) for c in class_ids[1:]])
    mask = np.zeros((size, size), np.uint8)
    best = class_share[0]
    for k in range(1, len(class_ids)):  # argmax over a handful of classes, cheaper than argmax(0)
        better = class_share[k] > best
        mask[better] = class_ids[k]
        best = np.maximum(best, class_share[k])
    mask[best < IGNORE_WEIGHT] = 255
    for item_id, item in enumerate(placed, start=1):
        item.record["visible"] = round(float((instances == item_id).sum()) / max(item.record["area"], 1), 4)
    counts = np.bincount(mask.ravel(), minlength=256)
    for cls in class_ids[1:]:
        if 0 < counts[cls] < opts.min_pixels:  # too little of it to name in the label
            mask[mask == cls] = 255
    counts = np.bincount(mask.ravel(), minlength=256)
    for item in placed:
        item.record["class_pixels"] = int(counts[item.cls])
    return Scene(image, mask, instances, clutter > 0, [p.record for p in placed])


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Randomness of one image: a pure function of ``(seed, split, index)``."""
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


# --------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------


def _encode_mask(mask: np.ndarray) -> bytes:
    img = Image.fromarray(mask)
    img.putpalette(voc_palette().ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class _Rendered:
    name: str
    jpg: bytes
    png: bytes
    labels: list[int]
    record: dict[str, Any]


_WORKER: dict[str, Any] = {}  # what each worker process renders from (set by _init_worker)


def _init_worker(sets: dict[str, SpriteSet], seed: int, opts: SceneOptions) -> None:
    _WORKER.update(sets=sets, seed=seed, opts=opts)


def _render(job: tuple[str, int]) -> _Rendered:
    """Generate and encode image ``index`` of ``split``; a pure function of the worker state."""
    split, index = job
    opts: SceneOptions = _WORKER["opts"]
    scene = generate_scene(_WORKER["sets"][split], scene_rng(_WORKER["seed"], split, index), opts)
    bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, opts.quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
        raise RuntimeError("JPEG encoding failed")
    record = {"items": scene.items, "clutter_pixels": int(scene.clutter.sum())}
    return _Rendered(f"{split}_{index:06d}", jpg.tobytes(), _encode_mask(scene.mask), scene.labels(), record)


def generate_dataset(
    out: str | Path,
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 300,
    opts: SceneOptions | None = None,
    source: str | Path | None = None,
    log: Any = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the benchmark to ``out`` (see the module docstring); returns the meta dict.

    ``workers > 1`` renders in that many processes; the bytes are the same as with one, since
    every image depends on ``(seed, split, index)`` only.
    """
    opts = opts or SceneOptions()
    opts.validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise FileExistsError(f"{out} exists, is not empty and is not a scenes dataset; choose another --out")
    sets = {"train": load_source(source, "train", seed), "val": load_source(source, "test", seed)}
    for sub in ("JPEGImages", "SegmentationClass"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        (out / sub).mkdir(parents=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)

    class_names = ["background", *sets["train"].class_names]
    cls_labels: dict[str, list[int]] = {}
    items: dict[str, Any] = {}
    class_images = np.zeros(len(class_names), np.int64)
    jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
    start = time.perf_counter()
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (sets, seed, opts))
        results = pool.imap(_render, jobs, chunksize=16)
    else:
        _init_worker(sets, seed, opts)
        results = map(_render, jobs)
    names: dict[str, list[str]] = {"train": [], "val": []}
    try:
        for done, r in enumerate(results, start=1):
            (out / "JPEGImages" / f"{r.name}.jpg").write_bytes(r.jpg)
            (out / "SegmentationClass" / f"{r.name}.png").write_bytes(r.png)
            cls_labels[r.name] = r.labels
            class_images[r.labels] += 1
            items[r.name] = r.record
            names[r.name.split("_")[0]].append(r.name)
            if log is not None and done % 500 == 0:
                log(f"{done}/{len(jobs)} images ({time.perf_counter() - start:.1f} s)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _WORKER.clear()
    for split, listed in names.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in listed))

    (out / "classes.txt").write_text("".join(n + "\n" for n in class_names))
    (out / "cls_labels.json").write_text(json.dumps(cls_labels, indent=0, sort_keys=True) + "\n")
    (out / "items.json").write_text(json.dumps(items, sort_keys=True) + "\n")
    meta = {
        "generator": "core.data.scenes",
        "version": VERSION,
        "seed": seed,
        "train": n_train,
        "val": n_val,
        "options": asdict(opts),
        "source": sets["train"].source,
        "source_splits": {"train": "train", "val": "test"},
        "classes": class_names,
        "ignore": f"255 where no class makes up >= {IGNORE_WEIGHT:.0%} of a pixel's colour "
        "(the soft 1-2 px edge of items), and on classes with fewer than min_pixels pixels",
        "images_per_class": {n: int(c) for n, c in zip(class_names[1:], class_images[1:])},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def contact_sheet(root: str | Path, names: list[str], columns: int = 4) -> np.ndarray:
    """Image | coloured mask pairs of ``names`` as one RGB uint8 picture (for a quick look)."""
    root = Path(root)
    palette = voc_palette()
    tiles = []
    for name in names:
        bgr = cv2.imread(str(root / "JPEGImages" / f"{name}.jpg"))
        mask = np.array(Image.open(root / "SegmentationClass" / f"{name}.png"))
        tiles.append(np.concatenate([bgr[..., ::-1], palette[mask]], axis=1))
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        framed = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row]
        rows.append(np.concatenate(framed, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.data.scenes",
        description="Generate the scenes benchmark: Fashion-MNIST items on cluttered backgrounds.",
    )
    d = SceneOptions()
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--val", type=int, default=300, help="number of validation images")
    parser.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument("--scale-min", type=float, default=d.scale_min, help="smallest item enlargement")
    parser.add_argument("--scale-max", type=float, default=d.scale_max, help="largest item enlargement")
    parser.add_argument("--clutter", type=float, default=d.clutter, help="clutter density (0 = none)")
    parser.add_argument(
        "--occlusion", type=float, default=d.occlusion, help="largest hidden fraction of an item"
    )
    parser.add_argument("--min-pixels", type=int, default=d.min_pixels, help="pixels a class needs")
    parser.add_argument("--texture", type=float, default=d.texture, help="probability of a patterned item")
    parser.add_argument("--max-rotation", type=float, default=d.max_rotation, help="item rotation, degrees")
    parser.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    parser.add_argument(
        "--source",
        default=None,
        help="folder of Fashion-MNIST idx files, or 'procedural' (default: Debian's dataset-fashion-mnist)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (same bytes for any number)")
    parser.add_argument("--preview", default=None, help="save a contact sheet PNG")
    args = parser.parse_args(argv)
    opts = SceneOptions(
        size=args.size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        clutter=args.clutter,
        occlusion=args.occlusion,
        min_pixels=args.min_pixels,
        texture=args.texture,
        max_rotation=args.max_rotation,
        quality=args.quality,
    )
    start = time.perf_counter()
    try:
        meta = generate_dataset(
            args.out, args.seed, args.train, args.val, opts, args.source, log=print, workers=args.workers
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    print(
        f"wrote {args.train} train + {args.val} val images ({meta['source']}) to {args.out} in {took:.1f} s"
    )
    if args.preview:
        names = [f"val_{i:06d}" for i in range(min(args.val, 16))] or [f"train_{i:06d}" for i in range(16)]
        Image.fromarray(contact_sheet(args.out, names)).save(args.preview)
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
