"""Reading the scenes benchmark: a VOC-layout folder written by ``python -m core.data.scenes``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.data.scenes.writer import is_complete, read_meta
from core.data.voc import DatasetError, VOCLayoutDataset, make_transform, read_class_names


class ScenesDataset(VOCLayoutDataset):
    """The offline scenes benchmark (``python -m core.data.scenes``): VOC layout, ``train`` /
    ``val`` splits, class names from ``classes.txt``, labels from ``cls_labels.json``;
    ``meta`` is its ``meta.json`` (options, counts, item source; empty for a folder without one)."""

    kind = "scenes"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        train: bool,
        data_cfg: dict[str, Any],
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(
                f"scenes root {root} does not exist; generate it with python -m core.data.scenes --out {root}"
            )
        super().__init__(
            root,
            split,
            list_file=root / "ImageSets" / "Segmentation" / f"{split}.txt",
            image_dir=root / "JPEGImages",
            mask_dir=root / "SegmentationClass",
            class_names=read_class_names(root),
            train=train,
            transform=make_transform(data_cfg, train),
            seed=seed,
            ignore_index=data_cfg.get("ignore_index", 255),
            list_hint=f"; generate the benchmark with python -m core.data.scenes --out {root}",
        )
        self.meta: dict[str, Any] = read_meta(root) if is_complete(root) else {}
