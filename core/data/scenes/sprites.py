"""Item sources of the scenes benchmark: Fashion-MNIST idx files, or procedural shapes for tests.

The benchmark's classes are groups of source classes (``CLASS_SETS``): Fashion-MNIST's ten classes
include four tops that even a fully supervised network confuses at this resolution (T-shirt,
pullover, coat, shirt) and three kinds of shoe. Weakly-supervised segmentation is about *where*
an object is, not about telling look-alikes apart, so the canonical class set ("groups4") merges
them into four well-separated classes: top (the dress included), trouser, shoe, bag. "groups"
keeps the dress apart (five classes; the benchmark before version 3: the models took dresses for
tops most, README); "fashion10" keeps the ten original classes (used by the single-item
pretraining, the offline stand-in for ImageNet).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError

SPRITE_SIZE = 28
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
# class set -> source -> [(benchmark class name, [source class indices])]
GROUPS: dict[str, list[tuple[str, list[int]]]] = {
    "fashion-mnist": [
        ("top", [0, 2, 4, 6]),  # T-shirt, pullover, coat, shirt
        ("trouser", [1]),
        ("dress", [3]),
        ("shoe", [5, 7, 9]),  # sandal, sneaker, ankle boot
        ("bag", [8]),
    ],
    "procedural": [
        ("round", [0, 3]),  # disk, ring
        ("box", [1, 8]),  # square, diamond
        ("pointed", [2, 6]),  # triangle, star
        ("crossed", [4, 5]),  # plus, cross
        ("long", [7, 9]),  # bar, crescent
    ],
}


def _merged(groups: list[tuple[str, list[int]]], into: str, absorbed: str) -> list[tuple[str, list[int]]]:
    """``groups`` with group ``absorbed`` joined to group ``into`` (members sorted)."""
    extra = dict(groups)[absorbed]
    return [(n, sorted(m + extra) if n == into else m) for n, m in groups if n != absorbed]


CLASS_SETS: dict[str, dict[str, list[tuple[str, list[int]]]]] = {
    "groups": GROUPS,
    # the benchmark: the dress joins the tops, the class the models confused it with most (README:
    # which class takes which); the procedural shapes lose one group likewise
    "groups4": {
        "fashion-mnist": _merged(GROUPS["fashion-mnist"], "top", "dress"),
        "procedural": _merged(GROUPS["procedural"], "crossed", "long"),
    },
    "fashion10": {
        "fashion-mnist": [(n, [i]) for i, n in enumerate(FASHION_CLASSES)],
        "procedural": [(n, [i]) for i, n in enumerate(PROCEDURAL_CLASSES)],
    },
}
DEFAULT_CLASS_SET = "groups4"


class SourceMissing(UserError, FileNotFoundError):
    """The Fashion-MNIST files are not where the generator looks (the message says how to get them)."""


_HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist, files in "
    f"{DEBIAN_DIR}), or run torchvision.datasets.FashionMNIST('DIR', download=True) on a machine with "
    "network and pass --source DIR; --source procedural needs no files"
)


@dataclass
class SpriteSet:
    """Grayscale items ``images (N, 28, 28)`` uint8 (0 = empty) with ``labels (N,)`` indexing
    ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str  # "fashion-mnist" | "procedural"
    split: str  # "train" | "test"
    _members: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def members(self, cls: int) -> np.ndarray:
        """Indices of the items of class ``cls`` (cached)."""
        if cls not in self._members:
            self._members[cls] = np.flatnonzero(self.labels == cls)
        return self._members[cls]


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format, optionally gzipped) as a numpy array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
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
    raise SourceMissing(f"Fashion-MNIST idx files not found (looked in {looked}); {_HOW_TO_GET}")


def load_fashion_mnist(folder: Path, split: str) -> SpriteSet:
    """Fashion-MNIST ``split`` ("train" 60k or "test" 10k) from a folder of idx files."""
    prefix = "train" if split == "train" else "t10k"
    img_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    lbl_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        raise SourceMissing(f"{folder} lacks the Fashion-MNIST {split} files; {_HOW_TO_GET}")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (SPRITE_SIZE, SPRITE_SIZE) or labels.shape != images.shape[:1]:
        raise UserError(f"{folder}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
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


def group_classes(sprites: SpriteSet, class_set: str) -> SpriteSet:
    """The same items relabelled with the benchmark classes of ``class_set`` (see ``CLASS_SETS``)."""
    if class_set not in CLASS_SETS:
        raise UserError(f"unknown class set {class_set!r}; expected one of {', '.join(CLASS_SETS)}")
    groups = CLASS_SETS[class_set][sprites.source]
    lookup = np.full(len(sprites.class_names), -1, np.int64)
    for new, (_, members) in enumerate(groups):
        lookup[members] = new
    return SpriteSet(
        sprites.images, lookup[sprites.labels], [name for name, _ in groups], sprites.source, sprites.split
    )


def load_source(
    source: str | Path | None, split: str, seed: int = 0, class_set: str = DEFAULT_CLASS_SET
) -> SpriteSet:
    """Items of ``split`` ("train" | "test") labelled with ``class_set``: ``source`` "procedural",
    a folder of idx files, or None (Debian's package, then torchvision's folder)."""
    if source is not None and str(source) == "procedural":
        raw = ProceduralSprites(seed=seed).split(split)
    else:
        raw = load_fashion_mnist(find_fashion_mnist(source), split)
    return group_classes(raw, class_set)
