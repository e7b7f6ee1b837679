"""Reading the scenes benchmark: a VOC-layout folder written by ``python -m core.data.scenes``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from core.data.scenes.writer import is_complete, read_meta
from core.data.voc import Layout, VOCLayoutDataset, read_class_names


class ScenesDataset(VOCLayoutDataset):
    """The offline scenes benchmark (``python -m core.data.scenes``): VOC layout, ``train`` /
    ``val`` splits, class names from ``classes.txt``, labels from ``cls_labels.json``;
    ``meta`` is its ``meta.json`` (options, counts, item source; empty for a folder without one)."""

    kind = "scenes"
    missing_root_hint = "; generate it with python -m core.data.scenes --out {root}"

    def layout(self, root: Path, split: str) -> Layout:
        return Layout(
            list_file=root / "ImageSets" / "Segmentation" / f"{split}.txt",
            image_dir=root / "JPEGImages",
            mask_dir=root / "SegmentationClass",
            class_names=read_class_names(root),
            list_hint=f"; generate the benchmark with python -m core.data.scenes --out {root}",
        )

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        return read_meta(self.root) if is_complete(self.root) else {}
