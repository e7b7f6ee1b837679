"""Datasets: PASCAL VOC (+SBD), COCO 2014 (VOC layout), the offline scenes benchmark, image folders.

``build_dataset(cfg, split, train)`` picks the dataset named by ``cfg["data"]["name"]``;
``class_names(cfg)`` gives its class names (background first). Training items follow the sample
dict of docs/architecture.md (see ``core.data.transforms``).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from core.data.coco import COCO_CLASSES, COCODataset
from core.data.folder import ImageFolder
from core.data.scenes import ScenesDataset
from core.data.transforms import EvalTransform, TrainTransform, sample_rng
from core.data.voc import (
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    VOCLayoutDataset,
    map_class_ids,
    read_class_names,
)

TRAIN_DATASETS = ("voc", "coco", "scenes")  # with image-level labels: core.train can use them
DATASETS = TRAIN_DATASETS + ("folder",)  # an image folder: evaluation / analysis only

__all__ = [
    "COCO_CLASSES",
    "VOC_CLASSES",
    "COCODataset",
    "DATASETS",
    "TRAIN_DATASETS",
    "DatasetError",
    "EvalTransform",
    "ImageFolder",
    "ScenesDataset",
    "TrainTransform",
    "VOCDataset",
    "VOCLayoutDataset",
    "build_dataset",
    "class_names",
    "map_class_ids",
    "sample_rng",
]


def class_names(cfg: dict[str, Any]) -> list[str]:
    """Class names of the configured dataset, background first (``len == C``)."""
    name = cfg["data"]["name"]
    if name == "voc":
        return list(VOC_CLASSES)
    if name == "coco":
        return list(COCO_CLASSES)
    if name == "scenes":
        return read_class_names(cfg["data"]["root"])
    if name == "folder":
        raise DatasetError("an image folder has no class names: they come from the model's checkpoint")
    raise DatasetError(f"unknown dataset data.name={name!r}; expected one of {', '.join(DATASETS)}")


def build_dataset(cfg: dict[str, Any], split: str | None = None, train: bool = True) -> Dataset:
    """The dataset of ``cfg["data"]`` for ``split`` (default: ``data.train_split`` when ``train``,
    else ``data.val_split``), with training augmentation when ``train`` and none otherwise.

    Raises ``DatasetError`` naming what is missing, and when ``model.num_classes`` does not match
    the dataset's classes.
    """
    data = cfg["data"]
    name = data["name"]
    seed = int(cfg.get("train", {}).get("seed", 0))
    if split is None:
        split = data["train_split"] if train else data["val_split"]
    if name == "folder":
        if train:
            raise DatasetError("an image folder has no labels and cannot be used for training")
        return ImageFolder(data["root"], data_cfg=data)
    if name == "voc":
        ds: VOCLayoutDataset = VOCDataset(data["root"], split, train=train, data_cfg=data, seed=seed)
    elif name == "coco":
        ds = COCODataset(data["root"], split, train=train, data_cfg=data, seed=seed)
    elif name == "scenes":
        ds = ScenesDataset(data["root"], split, train=train, data_cfg=data, seed=seed)
    else:
        raise DatasetError(f"unknown dataset data.name={name!r}; expected one of {', '.join(DATASETS)}")
    if train:
        ds.on_corrupt = data.get("on_corrupt", "stop")
    expected = cfg.get("model", {}).get("num_classes")
    if expected is not None and expected != len(ds.class_names):
        raise DatasetError(
            f"model.num_classes is {expected} but dataset {name} has {len(ds.class_names)} classes "
            f"(background included); set model.num_classes={len(ds.class_names)}"
        )
    return ds
