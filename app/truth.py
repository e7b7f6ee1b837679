"""Ground truth of the analysed image, when it has one, and its scores.

An image has ground truth when it is a shipped example (``assets/examples/NAME.jpg`` with
``NAME.png``, a palette mask of class ids, and ``NAME.json``, its class list and labels; written
by ``scripts/make_examples.py``) or was opened from a dataset (the Dataset tab). The mask is kept
in its own class ids; ``for_model`` rewrites it in a checkpoint's ids by class name (core's
``map_class_ids``), so any checkpoint can be scored against it, or says which classes it lacks.
Scores are core's: ``core.evaluate.score_stages`` (one confusion matrix per stage).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.backend import BACKEND, example_images
from app.cache import image_digest
from core.config import DEFAULTS
from core.errors import UserError

IGNORE = int(DEFAULTS["data"]["ignore_index"])
STAGE_TITLES = {  # each of core.evaluate.STAGES -> what the app calls it
    "cam_label": "CAM",
    "par_label": "PAR",
    "rw_mhsa_label": "MHSA-propagated",
    "rw_afa_label": "AFA-propagated",
    "seg_label": "segmentation",
    "seg_crf_label": "segmentation + CRF",
}


@dataclass(frozen=True)
class GroundTruth:
    """A mask ``(H, W)`` uint8 of ids into ``classes`` (0 background, 255 ignore) at the analysed
    image's size, and where it came from (shown to the user)."""

    mask: np.ndarray
    classes: tuple[str, ...]
    source: str
    name: str = ""

    @property
    def label_names(self) -> tuple[str, ...]:
        """The foreground classes in the mask, in class order."""
        ids = {int(v) for v in np.unique(self.mask)} - {0, IGNORE}
        return tuple(self.classes[i] for i in sorted(ids) if i < len(self.classes))

    def resized(self, shape: tuple[int, ...]) -> GroundTruth:
        """The mask at the image size ``shape`` (nearest neighbour: ids stay ids)."""
        if self.mask.shape == tuple(shape[:2]):
            return self
        mask = cv2.resize(self.mask, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST)
        return GroundTruth(mask, self.classes, self.source, self.name)


def for_model(truth: GroundTruth | None, classes) -> tuple[np.ndarray | None, list[str]]:
    """The mask in the ids of a model's ``classes`` (by name) and the mask's classes the model
    does not know. With unknown classes the mask is not returned: scores would be partial."""
    if truth is None:
        return None, []
    from core.data import map_class_ids

    mask, unknown = map_class_ids(truth.mask, truth.classes, list(classes), IGNORE)
    return (None if unknown else mask), unknown


def true_labels(truth: GroundTruth | None, classes) -> tuple[str, ...]:
    """The true image-level labels that a model with ``classes`` knows."""
    if truth is None:
        return ()
    return tuple(n for n in truth.label_names if n in classes)


def stage_scores(analysis: Any, truth: GroundTruth | None) -> dict[str, Any]:
    """``{stage: ConfusionMatrix}`` of the analysis against the ground truth (empty without one,
    or when the mask holds classes the model does not know)."""
    if analysis is None or truth is None:
        return {}
    from core.evaluate import score_stages

    mask, _ = for_model(truth.resized(analysis.image.shape), analysis.classes)
    if mask is None:
        return {}
    return score_stages(analysis, mask, len(analysis.classes), IGNORE)


def errors(analysis: Any, truth: GroundTruth | None, field: str) -> np.ndarray | None:
    """``core.method.metrics.error_map`` of one label map of the analysis, or None."""
    label = getattr(analysis, field, None) if analysis is not None else None
    if label is None or truth is None:
        return None
    mask, _ = for_model(truth.resized(analysis.image.shape), analysis.classes)
    if mask is None:
        return None
    from core.method.metrics import error_map

    return error_map(label, mask, IGNORE)


def score_line(cm: Any, classes) -> str:
    """``mIoU 63.2 · background 91.0 · top 55.1``: the image's mIoU and the IoU of every class it
    scores (in its mask or predicted), in percent."""
    if cm is None:
        return ""
    miou = cm.miou()
    parts = [f"**mIoU {100 * miou:.1f}**" if np.isfinite(miou) else "**mIoU –**"]
    parts += [f"{name} {100 * v:.1f}" for name, v in zip(classes, cm.iou()) if np.isfinite(v)]
    return " · ".join(parts)


# -- examples -----------------------------------------------------------------------------------


def read_example_truth(image_path: str | Path) -> GroundTruth | None:
    """The ground truth shipped beside an example image (``NAME.json`` naming the mask), or None."""
    path = Path(image_path)
    descriptor = path.with_suffix(".json")
    if not descriptor.is_file():
        return None
    try:
        info = json.loads(descriptor.read_text())
        classes = tuple(str(c) for c in info["classes"])
        mask = BACKEND.read_mask(path.parent / info.get("mask", path.with_suffix(".png").name))
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"the ground truth of example {path.name} cannot be read ({exc})") from exc
    return GroundTruth(mask, classes, f"example {path.stem}", path.stem)


class ExampleIndex:
    """Which decoded image is which example: an example reaches a handler as a copy in Gradio's
    cache (or as an upload of the same file), so it is recognised by its pixels."""

    def __init__(self):
        self._lock = threading.Lock()
        self._index: dict[str, str] = {}
        self._built_for: tuple | None = None

    def find(self, image_hash: str, max_side: int) -> GroundTruth | None:
        paths = [p for p in example_images() if Path(p).with_suffix(".json").is_file()]
        signature = (max_side, tuple((p, Path(p).stat().st_mtime_ns) for p in paths))
        with self._lock:
            if self._built_for != signature:
                self._index = {}
                for p in paths:
                    image, _ = BACKEND.read_image(p, max_side)
                    self._index[image_digest(image)] = p
                self._built_for = signature
            path = self._index.get(image_hash)
        return read_example_truth(path) if path else None


EXAMPLES = ExampleIndex()
