"""All images under a folder, for inference: sorted, read robustly with ``core.io.read_image``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from core.data.transforms import EvalTransform
from core.data.voc import DatasetError
from core.io import ImageReadError, read_image

FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFolder(Dataset):
    """Every image file under ``root`` (recursively, hidden files skipped), sorted by relative path.

    An item is ``{"name": relative path without extension, "path": str, "rgb": uint8 (H, W, 3),
    "notes": [str]}``; with ``data_cfg`` it also carries ``image`` / ``image_raw`` ``(3, H, W)``
    and ``valid`` ``(H, W)`` as in the training sample dict (no labels, no mask). A file that
    cannot be read raises ``ImageReadError`` naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        max_side: int | None = 1024,
        recursive: bool = True,
        data_cfg: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"image folder {self.root} does not exist (set data.root to a folder of images)"
            )
        self.max_side = max_side
        pattern = "**/*" if recursive else "*"
        files = []
        for path in self.root.glob(pattern):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if path.is_file() and path.suffix.lower() in FOLDER_EXTENSIONS:
                files.append(path)
        self.paths = sorted(files, key=lambda p: p.relative_to(self.root).as_posix())
        self.names = [p.relative_to(self.root).with_suffix("").as_posix() for p in self.paths]
        if not self.paths:
            raise DatasetError(
                f"image folder {self.root} holds no images ({', '.join(FOLDER_EXTENSIONS)})"
            )
        self.transform = EvalTransform.from_cfg(data_cfg) if data_cfg is not None else None

    def set_epoch(self, epoch: int) -> None:
        """No augmentation here; present so every dataset has the same interface."""

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        rgb, notes = read_image(path, max_side=self.max_side)  # its errors name the file
        item: dict[str, Any] = {"name": self.names[index], "path": str(path), "rgb": rgb, "notes": notes}
        if self.transform is not None:
            item.update(self.transform(rgb, None))
        return item

    def read_all(self) -> list[tuple[str, np.ndarray | None, list[str]]]:
        """``[(name, rgb or None, notes or [error])]`` for every file, never raising."""
        out = []
        for i, name in enumerate(self.names):
            try:
                rgb, notes = read_image(self.paths[i], max_side=self.max_side)
                out.append((name, rgb, notes))
            except ImageReadError as exc:
                out.append((name, None, [str(exc)]))
        return out
