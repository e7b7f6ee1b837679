"""PASCAL VOC 2012 (+ SBD's augmented masks) and every other dataset stored in VOC layout.

Layout (ROOT = ``cfg["data"]["root"]``)::

    ROOT/JPEGImages/NAME.jpg
    ROOT/SegmentationClass/NAME.png          ground truth of train / val (palette PNG of class ids)
    ROOT/SegmentationClassAug/NAME.png       SBD's masks for train_aug (10,582 images)
    ROOT/ImageSets/Segmentation/SPLIT.txt    one NAME a line (DeepLab-style "path path" lines work too)
    ROOT/cls_labels.json                     optional: {NAME: [class ids]} (ids 1..C-1)
    ROOT/cls_labels_onehot.npy               optional: the authors' dict NAME -> one-hot (C-1,)

Image-level labels come from the cls_labels file when there is one, else from the mask of each
image (every class id present, without 0 and 255). Splits whose name contains "aug" read their
masks from SegmentationClassAug, all others from SegmentationClass. Training may run without
masks when a cls_labels file exists (then samples have no ``mask``); evaluation needs masks.

Everything that is missing is reported when the dataset is built, naming the missing part.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.transforms import EvalTransform, TrainTransform, sample_rng
from core.errors import UserError
from core.io import ImageReadError, cut_short, read_mask

VOC_CLASSES: list[str] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CLS_LABEL_FILES = ("cls_labels.json", "cls_labels_onehot.npy", "cls_labels.npy")
_SHOW = 5  # how many missing names an error message lists

Transform = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator], dict[str, torch.Tensor]]


class DatasetError(UserError, ValueError):
    """A dataset folder that cannot be used; the message names what is missing or malformed."""


def read_name_list(path: Path) -> list[str]:
    """Names of a split file: one a line; ``/JPEGImages/x.jpg /Seg.../x.png`` lines give ``x``."""
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        names.append(os.path.splitext(os.path.basename(first))[0])
    return names


def index_files(folder: Path, extensions: Sequence[str]) -> dict[str, str]:
    """``{stem: file name}`` of the files in ``folder`` with one of ``extensions`` (first wins)."""
    found: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in extensions and stem not in found:
                found[stem] = entry.name
    return found


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers only (the authors' cls_labels .npy files are
    pickled dicts); any other global is refused, so a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_npy_dict(path: Path) -> dict:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        if not dtype.hasobject:
            raise DatasetError(f"{path} holds a plain array, not a dict of image labels")
        obj = _RestrictedUnpickler(f).load()
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} does not hold a dict of image labels")
    return obj


def load_cls_labels(path: Path, num_fg: int) -> dict[str, np.ndarray]:
    """Image-level labels: ``{name: multi-hot float32 (num_fg,)}``.

    ``.json``: ``{name: [class ids]}`` with ids in 1..num_fg (background 0 is never listed).
    ``.npy``: the authors' dict ``{name: one-hot (num_fg,)}`` (loaded without arbitrary pickles).
    """
    out: dict[str, np.ndarray] = {}
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{path} must hold an object {{name: [class ids]}}")
        for name, ids in data.items():
            vec = np.zeros(num_fg, dtype=np.float32)
            for cid in ids:
                if not isinstance(cid, int) or not 1 <= cid <= num_fg:
                    raise DatasetError(
                        f"{path}: image {name!r} has class id {cid!r}; ids must be 1..{num_fg} "
                        "(background 0 is implicit)"
                    )
                vec[cid - 1] = 1.0
            out[str(name)] = vec
        return out
    try:
        data = _load_npy_dict(path)
    except (pickle.UnpicklingError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable cls_labels .npy file ({exc})") from exc
    for name, vec in data.items():
        arr = np.asarray(vec, dtype=np.float32).reshape(-1)
        if arr.shape[0] != num_fg:
            raise DatasetError(
                f"{path}: image {name!r} has a label vector of length {arr.shape[0]}, expected {num_fg} "
                "(one entry per foreground class)"
            )
        out[str(name)] = arr
    return out


def labels_from_mask(mask: np.ndarray, num_fg: int, ignore_index: int = 255) -> np.ndarray:
    """Multi-hot ``(num_fg,)`` float32 of the classes present in ``mask (H, W)``."""
    ids = np.unique(mask)
    ids = ids[(ids != 0) & (ids != ignore_index)]
    if ids.size and ids.max() > num_fg:
        raise ValueError(f"mask has class id {int(ids.max())} but the dataset has only {num_fg} classes")
    vec = np.zeros(num_fg, dtype=np.float32)
    vec[ids.astype(np.int64) - 1] = 1.0
    return vec


def map_class_ids(mask: np.ndarray, source: Sequence[str], target: Sequence[str],
                  ignore_index: int = 255) -> tuple[np.ndarray, list[str]]:
    """A mask of ``source`` class ids ``(H, W)`` rewritten in ``target``'s ids, matching classes by
    name. Returns the mask and the names present in it that ``target`` lacks (their pixels become
    ``ignore_index``, so scores against such a mask would be partial: callers say so)."""
    mask = np.asarray(mask)
    lookup = np.full(256, ignore_index, dtype=np.uint8)
    index = {name: i for i, name in enumerate(target)}
    unknown = []
    for value in np.unique(mask):
        value = int(value)
        if value == ignore_index:
            continue
        if value >= len(source):
            raise ValueError(f"mask has class id {value} but only {len(source)} class names")
        name = source[value]
        if name in index:
            lookup[value] = index[name]
        else:
            unknown.append(name)
    return lookup[mask.astype(np.uint8)], unknown


def load_rgb(path: Path) -> np.ndarray:
    """A dataset image as RGB uint8 ``(H, W, 3)``, stored pixel order (EXIF is ignored, because
    ground-truth masks are drawn on the stored pixels). A file that cannot be decoded completely
    (missing, truncated, corrupt) is an ``ImageReadError`` naming it: never half an image."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read the image {path} ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"the image {path} is empty (0 bytes)")
    if cut_short(data):
        raise ImageReadError(f"the image {path} is truncated (the file ends before the image does)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ImageReadError(f"cannot decode the image {path} (corrupt, truncated or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class Layout:
    """Where a VOC-layout dataset keeps a split (its name list, images, masks), its class names,
    and what to tell the user when the list or the masks are missing."""

    list_file: Path
    image_dir: Path
    mask_dir: Path | None
    class_names: Sequence[str]
    list_hint: str = ""
    mask_hint: str = ""


class VOCLayoutDataset(Dataset):
    """A segmentation dataset in VOC layout with image-level labels.

    Items are the sample dict of the data contract (see ``core.data.transforms``): ``image``,
    ``image_raw`` ``(3, H, W)``, ``cls_label`` ``(C-1,)``, ``mask`` ``(H, W)`` when ground truth
    exists, ``valid`` ``(H, W)``, ``name``. Training samples are augmented with randomness drawn
    from ``(seed, epoch, index)``; call ``set_epoch`` before each epoch (before the DataLoader
    iterator is created, so that worker processes see it).
    """

    kind = "dataset"
    missing_root_hint = " (set data.root to the folder of the dataset)"  # may name {root}
    # training only (``data.on_corrupt``, set by build_dataset): "stop" at an image that cannot be
    # decoded, naming it; "skip": use the next readable item in its place (evaluation always stops)
    on_corrupt = "stop"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        train: bool,
        data_cfg: dict[str, Any],
        seed: int = 0,
        cls_labels: str | os.PathLike | None = None,
    ) -> None:
        """The ``split`` of the dataset in ``root``, augmented for training when ``train``
        (``data_cfg`` is the config's ``data`` section); ``cls_labels`` overrides the image-label
        file found in the root (see ``CLS_LABEL_FILES``)."""
        if not Path(root).is_dir():
            hint = self.missing_root_hint.format(root=root)
            raise DatasetError(f"{self.kind} root {root} does not exist{hint}")
        layout = self.layout(Path(root), split)
        list_file, image_dir, mask_dir = layout.list_file, layout.image_dir, layout.mask_dir
        list_hint, mask_hint = layout.list_hint, layout.mask_hint
        class_names, transform = layout.class_names, make_transform(data_cfg, train)
        ignore_index = data_cfg.get("ignore_index", 255)
        self.root = Path(root)
        self.split = split
        self.class_names = list(class_names)
        self.num_fg = len(self.class_names) - 1
        self.train = train
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.ignore_index = ignore_index
        self._warned: set[int] = set()  # unreadable items already reported (on_corrupt=skip)
        where = f"{self.kind} root {self.root}"
        if not list_file.is_file():
            raise DatasetError(f"{where} has no {self._rel(list_file)}{list_hint}")
        self.names = read_name_list(list_file)
        if not self.names:
            raise DatasetError(f"{where}: the split file {self._rel(list_file)} lists no images")
        if not image_dir.is_dir():
            raise DatasetError(f"{where} has no {self._rel(image_dir)}/ folder of images")
        images = index_files(image_dir, IMAGE_EXTENSIONS)
        self._check_listed(images, image_dir, "images", list_file)
        self.image_paths = [image_dir / images[n] for n in self.names]

        label_file = Path(cls_labels) if cls_labels is not None else self._find_cls_labels()
        self.cls_labels: dict[str, np.ndarray] | None = None
        if label_file is not None:
            if not label_file.is_file():
                raise DatasetError(f"{where}: the cls_labels file {label_file} does not exist")
            self.cls_labels = load_cls_labels(label_file, self.num_fg)
            absent = [n for n in self.names if n not in self.cls_labels]
            if absent:
                raise DatasetError(
                    f"{where}: {len(absent)} of {len(self.names)} images of split {split!r} have no entry in "
                    f"{label_file.name} (first: {', '.join(absent[:_SHOW])})"
                )

        self.mask_paths: list[Path] | None = None
        need_masks = not train or self.cls_labels is None
        if mask_dir is not None and mask_dir.is_dir():
            masks = index_files(mask_dir, (".png",))
            self._check_listed(masks, mask_dir, "masks", list_file)
            self.mask_paths = [mask_dir / masks[n] for n in self.names]
        elif need_masks:
            missing = self._rel(mask_dir) if mask_dir is not None else "a mask folder"
            why = (
                "evaluation needs ground-truth masks"
                if not train
                else "without a cls_labels file the image labels are derived from masks"
            )
            raise DatasetError(f"{where} has no {missing}/ folder ({why}){mask_hint}")

    def layout(self, root: Path, split: str) -> Layout:
        """Where this dataset keeps the files of ``split``; each dataset says it."""
        raise NotImplementedError

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def _find_cls_labels(self) -> Path | None:
        for name in CLS_LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        return None

    def _check_listed(self, found: dict[str, str], folder: Path, what: str, list_file: Path) -> None:
        missing = [n for n in self.names if n not in found]
        if missing:
            raise DatasetError(
                f"{self.kind} root {self.root}: {len(missing)} of {len(self.names)} {what} listed in "
                f"{self._rel(list_file)} are missing from {self._rel(folder)}/ "
                f"(first: {', '.join(missing[:_SHOW])})"
            )

    @property
    def has_masks(self) -> bool:
        return self.mask_paths is not None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of ``epoch`` (randomness = f(seed, epoch, index))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw image ``(H, W, 3)`` uint8 and mask ``(H, W)`` uint8 (or None), unaugmented."""
        rgb = load_rgb(self.image_paths[index])
        mask = None
        if self.mask_paths is not None:
            mask = read_mask(self.mask_paths[index])
            if mask.shape != rgb.shape[:2]:
                raise DatasetError(
                    f"{self.kind} root {self.root}: mask {self.mask_paths[index].name} is "
                    f"{mask.shape[1]}x{mask.shape[0]} but its image is {rgb.shape[1]}x{rgb.shape[0]}"
                )
        return rgb, mask

    def cls_label(self, index: int, mask: np.ndarray | None) -> np.ndarray:
        """Multi-hot ``(C-1,)`` float32 image label of item ``index``."""
        name = self.names[index]
        if self.cls_labels is not None:
            return self.cls_labels[name]
        assert mask is not None  # guaranteed at construction
        try:
            return labels_from_mask(mask, self.num_fg, self.ignore_index)
        except ValueError as exc:
            raise DatasetError(f"{self.kind} root {self.root}: mask of {name}: {exc}") from exc

    def load_or_skip(self, index: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        """``(index, rgb, mask)`` of item ``index``; when it cannot be read and unreadable training
        items are skipped (``on_corrupt``), of the next readable item (a pure function of
        ``index``, so exact resume still holds), with a warning naming the skipped file."""
        skip = self.train and self.on_corrupt == "skip"
        for offset in range(len(self) if skip else 1):
            item = (index + offset) % len(self)
            try:
                return (item, *self.load(item))
            except ImageReadError as exc:
                if not self.train:
                    raise
                if not skip:
                    raise ImageReadError(f"{exc}; replace the file, or set data.on_corrupt=skip to train "
                                         "without it") from exc
                if item not in self._warned:
                    self._warned.add(item)
                    print(f"warning: skipping an unreadable training image: {exc}", file=sys.stderr,
                          flush=True)
        raise DatasetError(f"{self.kind} root {self.root}: no image of split {self.split!r} can be read")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, rgb, mask = self.load_or_skip(index)
        label = self.cls_label(index, mask)
        rng = sample_rng(self.seed, self.epoch, index)
        sample: dict[str, Any] = self.transform(rgb, mask, rng)
        sample["cls_label"] = torch.from_numpy(label.copy())
        sample["name"] = self.names[index]
        return sample


def make_transform(data_cfg: dict[str, Any], train: bool) -> Transform:
    return TrainTransform.from_cfg(data_cfg) if train else EvalTransform.from_cfg(data_cfg)


class VOCDataset(VOCLayoutDataset):
    """PASCAL VOC 2012 (+ SBD): ``train_aug`` / ``train`` / ``val`` splits, 21 classes."""

    kind = "VOC"

    def layout(self, root: Path, split: str) -> Layout:
        aug = "aug" in split
        return Layout(
            list_file=root / "ImageSets" / "Segmentation" / f"{split}.txt",
            image_dir=root / "JPEGImages",
            mask_dir=root / ("SegmentationClassAug" if aug else "SegmentationClass"),
            class_names=VOC_CLASSES,
            list_hint=(
                f"; for {split}, download SBD's SegmentationClassAug and its train_aug.txt list and put them "
                "under the VOC root (ImageSets/Segmentation/train_aug.txt, SegmentationClassAug/)"
                if aug
                else f"; the VOC2012 devkit ships ImageSets/Segmentation/{split}.txt (is data.root the "
                "VOC2012 folder?)"
            ),
            mask_hint=(
                "; download SBD's SegmentationClassAug masks, or put the authors' cls_labels_onehot.npy "
                "in the root to train without masks"
                if aug
                else ""
            ),
        )


def read_class_names(root: str | os.PathLike) -> list[str]:
    """Class names of a VOC-layout folder from ``ROOT/classes.txt`` (background first)."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise DatasetError(
            f"dataset root {root} has no classes.txt (class names one a line, background first)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise DatasetError(f"{path} must list background and at least one class")
    return names
