"""Dataset evaluations for the Dataset tab: which dataset folders the server offers, evaluating a
checkpoint on one of them image by image (``core.evaluate.evaluate_images``, the function behind
``python -m core.evaluate``), and the results, cached on disk so a restart does not redo them.

Each image's per-stage confusion matrix comes from core; the app keeps its non-zero entries and
its mIoU (core's ``ConfusionMatrix.miou``). Dataset scores are those matrices summed and read by
core's ``ConfusionMatrix`` again, so they are the numbers ``python -m core.evaluate`` prints for
the same images and settings (the CLI's defaults: dense pseudo labels, the checkpoint's scales,
``--precision`` as ``AFA_APP_PRECISION``, auto by default; CRF only when asked).

An image opened in Inspect from the table is analysed the same way, so the scores under its maps
are the table's; under bf16 (``auto`` on a CPU or GPU with fast bf16) they can differ by
rounding, because Inspect also captures every attention map, which the fused attention kernel of
an evaluation does not compute the same way. In fp32 they are equal (tested).

Datasets: ``AFA_APP_DATASETS`` (a server setting: ``os.pathsep``-separated folders, each
optionally ``FOLDER@SPLIT``; default ``data/scenes@val`` when it exists) plus the bundled subsets
in ``assets/datasets/`` (VOC layout, a few val images with masks: ``scripts/make_examples.py
--subset``). Public mode offers only the bundled subsets. A browser names a dataset by its id,
which must be one of these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import backend
from app.backend import BACKEND, ROOT, CheckpointInfo
from app.cache import checkpoint_fingerprint
from core.errors import UserError
from core.evaluate import STAGES

log = logging.getLogger("afa_app")

BUNDLED_DIR = ROOT / "assets" / "datasets"
FORMAT = 1  # of the cache files; a change makes old ones stale
SAVE_EVERY_S = 15.0  # a partial evaluation is saved this often, so an interrupted one resumes
STAGE_COLUMNS = {stage: stage.removesuffix("_label") for stage in STAGES}  # core's stage -> column
GAINS = (  # (column, minuend stage, subtrahend stage): where AFA helps or hurts
    ("rw_afa - rw_mhsa", "rw_afa_label", "rw_mhsa_label"),
    ("rw_afa - par", "rw_afa_label", "par_label"),
    ("seg - par", "seg_label", "par_label"),
)


# -- the datasets the server offers ------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    id: str  # "<folder relative to the app root>@<split>": what a browser sends back
    root: Path
    split: str
    label: str
    bundled: bool


def _dataset_info(root: Path, split: str, bundled: bool) -> DatasetInfo:
    from app.backend import checkpoint_id

    rel = checkpoint_id(root)
    try:
        count = sum(
            1 for line in (root / "ImageSets" / "Segmentation" / f"{split}.txt").open() if line.strip()
        )
        size = f"{count} images"
    except OSError:
        size = "?"
    label = f"{rel} · {split} · {size}" + (" · bundled" if bundled else "")
    return DatasetInfo(f"{rel}@{split}", root, split, label, bundled)


def known_datasets(public: bool = False) -> list[DatasetInfo]:
    """The dataset folders this server offers (public mode: only the bundled subsets)."""
    found: list[DatasetInfo] = []
    if not public:
        configured = os.environ.get("AFA_APP_DATASETS")
        entries = configured.split(os.pathsep) if configured else ["data/scenes@val"]
        for entry in filter(None, entries):
            folder, _, split = entry.partition("@")
            root = Path(folder) if Path(folder).is_absolute() else ROOT / folder
            if root.is_dir():
                found.append(_dataset_info(root, split or "val", False))
            elif configured:
                log.warning("AFA_APP_DATASETS names %s, which is not a folder", root)
    if BUNDLED_DIR.is_dir():
        for root in sorted(BUNDLED_DIR.iterdir()):
            for split_file in sorted((root / "ImageSets" / "Segmentation").glob("*.txt")):
                found.append(_dataset_info(root, split_file.stem, True))
    return found


def resolve_dataset(dataset_id: str | None, public: bool = False) -> DatasetInfo:
    for info in known_datasets(public):
        if info.id == dataset_id:
            return info
    raise UserError(f"Dataset '{dataset_id}' is not offered by this server; pick one from the list.")


def dataset_classes(info: DatasetInfo) -> list[str]:
    """The dataset's class names (background first), as core reads them."""
    return BACKEND.dataset_classes(info.root)


def compatible(checkpoints: list[CheckpointInfo], classes: list[str]) -> list[CheckpointInfo]:
    """The checkpoints that know exactly the dataset's classes (Transformers first)."""
    fits = [c for c in checkpoints if list(c.classes) == list(classes)]
    return sorted(fits, key=lambda c: (c.kind != "afa", c.id))


# -- one evaluation ----------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Per-image results of one checkpoint on one dataset (possibly partial: ``done < len``).

    ``entries[stage]``: ``(M, 4)`` int64 rows ``(image, true class, predicted class, pixels)``,
    the non-zero entries of every image's confusion matrix; ``unpredicted[stage]``: ``(M', 3)``
    rows ``(image, true class, pixels)`` of pixels given no class id. ``miou[stage]``: ``(N,)``
    each image's mIoU (NaN where undefined or not yet evaluated)."""

    key: str
    info: dict  # checkpoint, dataset, settings
    classes: list[str]
    names: list[str]
    present: np.ndarray  # (N, C-1) bool: the true image-level labels
    cls_f1: np.ndarray  # (N,)
    seconds: np.ndarray  # (N,)
    miou: dict[str, np.ndarray] = field(default_factory=dict)
    entries: dict[str, np.ndarray] = field(default_factory=dict)
    unpredicted: dict[str, np.ndarray] = field(default_factory=dict)
    done: int = 0
    _pending: dict[str, list] = field(default_factory=dict, repr=False)  # rows not yet concatenated

    @property
    def complete(self) -> bool:
        return self.done == len(self.names)

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGE_COLUMNS if s in self.miou]

    def add(self, index: int, evaluation: Any) -> None:
        """One image's ``core.evaluate.ImageEvaluation``."""
        n = len(self.names)
        for stage, cm in evaluation.confusions.items():
            if stage not in self.miou:
                self.miou[stage] = np.full(n, np.nan)
                self.entries[stage] = np.zeros((0, 4), dtype=np.int64)
                self.unpredicted[stage] = np.zeros((0, 3), dtype=np.int64)
            self.miou[stage][index] = cm.miou()
            g, p = np.nonzero(cm.matrix)
            (u,) = np.nonzero(cm.unpredicted)
            self._pending.setdefault(stage, []).append(
                (
                    np.stack([np.full_like(g, index), g, p, cm.matrix[g, p]], 1),
                    np.stack([np.full_like(u, index), u, cm.unpredicted[u]], 1),
                )
            )
        self.present[index, [c - 1 for c in evaluation.present]] = True
        self.cls_f1[index] = evaluation.cls_f1
        self.seconds[index] = evaluation.seconds
        self.done = max(self.done, index + 1)

    def _flush(self) -> None:
        for stage, chunks in self._pending.items():
            if chunks:
                self.entries[stage] = np.concatenate([self.entries[stage], *(e for e, _ in chunks)])
                self.unpredicted[stage] = np.concatenate([self.unpredicted[stage], *(u for _, u in chunks)])
        self._pending = {}

    def confusion(self, stage: str, images: np.ndarray | None = None):
        """The summed ``core.method.metrics.ConfusionMatrix`` of ``stage`` over ``images``
        (indices; default all)."""
        from core.method.metrics import ConfusionMatrix

        self._flush()
        c = len(self.classes)
        matrix, unpredicted = np.zeros((c, c), dtype=np.int64), np.zeros(c, dtype=np.int64)
        entries, missed = self.entries[stage], self.unpredicted[stage]
        if images is not None:
            entries = entries[np.isin(entries[:, 0], images)]
            missed = missed[np.isin(missed[:, 0], images)]
        np.add.at(matrix, (entries[:, 1], entries[:, 2]), entries[:, 3])
        np.add.at(unpredicted, missed[:, 1], missed[:, 2])
        return ConfusionMatrix.from_counts(matrix, unpredicted)

    def _evaluated(self) -> np.ndarray | None:
        """The images evaluated so far (None: all of them)."""
        return None if self.complete else np.arange(self.done)

    def totals(self) -> dict[str, dict]:
        """Per stage the dataset's ``{"miou", "pixel_accuracy", "per_class"}`` (core's as_dict),
        over the images evaluated so far."""
        images = self._evaluated()
        return {stage: self.confusion(stage, images).as_dict(self.classes) for stage in self.stages}

    def class_shares(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Which class takes which in ``stage`` over the images evaluated so far (core's
        ``ConfusionMatrix.class_shares``: each true class's pixels by predicted class, and each
        class's predicted over true area)."""
        return self.confusion(stage, self._evaluated()).class_shares()

    def gain(self, column: str) -> np.ndarray:
        """``(N,)`` per-image gain in mIoU points (NaN where a stage is missing)."""
        _, plus, minus = next(g for g in GAINS if g[0] == column)
        if plus not in self.miou or minus not in self.miou:
            return np.full(len(self.names), np.nan)
        return 100.0 * (self.miou[plus] - self.miou[minus])

    def labels_of(self, index: int) -> list[str]:
        return [self.classes[i + 1] for i in np.flatnonzero(self.present[index])]

    # -- on disk

    def save(self, path: Path) -> None:
        self._flush()
        arrays = {
            "names": np.array(self.names),
            "classes": np.array(self.classes),
            "present": self.present,
            "cls_f1": self.cls_f1,
            "seconds": self.seconds,
            "done": np.array(self.done),
            "info": np.array(json.dumps(self.info)),
        }
        for stage in self.miou:
            arrays[f"miou/{stage}"] = self.miou[stage]
            arrays[f"entries/{stage}"] = self.entries[stage]
            arrays[f"unpredicted/{stage}"] = self.unpredicted[stage]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, key: str) -> Evaluation:
        with np.load(path, allow_pickle=False) as z:
            ev = cls(
                key=key,
                info=json.loads(str(z["info"])),
                classes=[str(c) for c in z["classes"]],
                names=[str(n) for n in z["names"]],
                present=z["present"].copy(),
                cls_f1=z["cls_f1"].copy(),
                seconds=z["seconds"].copy(),
                done=int(z["done"]),
            )
            for name in z.files:
                kind, _, stage = name.partition("/")
                if kind in ("miou", "entries", "unpredicted"):
                    getattr(ev, kind)[stage] = z[name].copy()
        return ev


def cache_dir() -> Path:
    """Where evaluations are kept: ``AFA_APP_EVAL_CACHE``, else ``.cache/evaluations`` in the app
    folder (the system temp folder when that is not writable)."""
    configured = os.environ.get("AFA_APP_EVAL_CACHE")
    if configured:
        return Path(configured)
    folder = ROOT / ".cache" / "evaluations"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.gettempdir()) / "afa_evaluations"


def evaluation_key(checkpoint: CheckpointInfo, dataset: DatasetInfo, crf: bool) -> str:
    """Changes with the checkpoint file, the dataset's image list and the settings."""
    split_file = dataset.root / "ImageSets" / "Segmentation" / f"{dataset.split}.txt"
    parts = [
        FORMAT,
        checkpoint_fingerprint(checkpoint.path),
        str(dataset.root.resolve()),
        dataset.split,
        checkpoint_fingerprint(split_file),
        bool(crf),
        "dense",
        backend.PRECISION,
    ]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=12).hexdigest()


class EvaluationStore:
    """Evaluations in memory (a few) and on disk; one run per key at a time."""

    def __init__(self, keep: int = 4):
        self._items: OrderedDict[str, Evaluation] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._running: dict[str, threading.Lock] = {}

    def _path(self, key: str, partial: bool = False) -> Path:
        return cache_dir() / (f"{key}.partial.npz" if partial else f"{key}.npz")

    def get(self, key: str | None) -> Evaluation | None:
        """A complete evaluation from memory or disk, or None."""
        if not key:
            return None
        with self._lock:
            if key in self._items and self._items[key].complete:
                self._items.move_to_end(key)
                return self._items[key]
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            ev = Evaluation.load(path, key)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring the unreadable evaluation cache %s: %s", path, exc)
            return None
        self._remember(ev)
        return ev

    def _remember(self, ev: Evaluation) -> None:
        with self._lock:
            self._items[ev.key] = ev
            self._items.move_to_end(ev.key)
            while len(self._items) > self._keep:
                self._items.popitem(last=False)

    def clear_memory(self) -> None:
        with self._lock:
            self._items.clear()

    def run(
        self,
        checkpoint: CheckpointInfo,
        dataset: DatasetInfo,
        crf: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Evaluation:
        """The evaluation of ``checkpoint`` on ``dataset``: from the cache, else computed image by
        image (resuming a partial one), saved as it goes and at the end."""
        key = evaluation_key(checkpoint, dataset, crf)
        with self._lock:
            run_lock = self._running.setdefault(key, threading.Lock())
        with run_lock:  # a second request for the same evaluation waits for the first
            ev = self.get(key)
            if ev is not None:
                return ev
            cfg, data = BACKEND.open_evaluation(checkpoint.path, dataset.root, dataset.split)
            ev = self._resume(key, data)
            if ev is None:
                n, c = len(data), len(data.class_names)
                ev = Evaluation(
                    key=key,
                    info={
                        "checkpoint": checkpoint.id,
                        "checkpoint_label": checkpoint.label,
                        "dataset": dataset.id,
                        "dataset_root": str(dataset.root),
                        "split": dataset.split,
                        "crf": bool(crf),
                        "labels": "dense",
                        "precision": backend.PRECISION,
                    },
                    classes=list(data.class_names),
                    names=list(data.names),
                    present=np.zeros((n, c - 1), dtype=bool),
                    cls_f1=np.full(n, np.nan),
                    seconds=np.full(n, np.nan),
                )
            todo = list(range(ev.done, len(ev.names)))
            if todo:
                model = BACKEND.evaluation_model(checkpoint.path)
                saved = time.monotonic()
                if progress:
                    progress(ev.done, len(ev.names))
                for index, result in zip(todo, BACKEND.evaluate_images(model, data, cfg, todo, crf)):
                    ev.add(index, result)
                    if progress:
                        progress(ev.done, len(ev.names))
                    if time.monotonic() - saved > SAVE_EVERY_S and not ev.complete:
                        ev.save(self._path(key, partial=True))
                        saved = time.monotonic()
            ev.info["seconds"] = float(np.nansum(ev.seconds))
            ev.save(self._path(key))
            self._path(key, partial=True).unlink(missing_ok=True)
            self._remember(ev)
            return ev

    def _resume(self, key: str, data: Any) -> Evaluation | None:
        path = self._path(key, partial=True)
        if not path.is_file():
            return None
        try:
            ev = Evaluation.load(path, key)
        except (OSError, ValueError, KeyError):
            return None
        if ev.names != list(data.names) or ev.classes != list(data.class_names):
            return None
        log.info("resuming evaluation %s at image %d of %d", key, ev.done, len(ev.names))
        return ev

    def cached_key(self, checkpoint: CheckpointInfo, dataset: DatasetInfo, crf: bool) -> str | None:
        """The key of a complete cached evaluation of this pair, or None (nothing is computed)."""
        key = evaluation_key(checkpoint, dataset, crf)
        return key if self.get(key) is not None else None


EVALUATIONS = EvaluationStore()


# -- the table ---------------------------------------------------------------------------------


def table_columns(ev: Evaluation) -> list[str]:
    return ["image", "labels"] + [STAGE_COLUMNS[s] for s in ev.stages] + [g[0] for g in GAINS]


def table_rows(
    ev: Evaluation,
    sort_by: str | None = None,
    descending: bool = True,
    class_filter: str | None = None,
    name_filter: str = "",
) -> list[list]:
    """The per-image rows (mIoU and gains in points, one decimal; None where undefined), filtered
    to images with ``class_filter`` among their true labels and names containing ``name_filter``,
    sorted by a column (undefined values last)."""
    columns = table_columns(ev)
    values = {STAGE_COLUMNS[s]: 100.0 * ev.miou[s] for s in ev.stages}
    values.update({g[0]: ev.gain(g[0]) for g in GAINS})
    keep = np.arange(ev.done)
    if class_filter and class_filter in ev.classes[1:]:
        keep = keep[ev.present[keep, ev.classes.index(class_filter) - 1]]
    if name_filter:
        keep = np.array([i for i in keep if name_filter.lower() in ev.names[i].lower()], dtype=np.int64)
    if sort_by in values:
        column = values[sort_by][keep]
        order = np.argsort(
            np.where(np.isnan(column), np.inf, -column if descending else column), kind="stable"
        )
        keep = keep[order]
    elif sort_by == "image" and descending:
        keep = keep[::-1]
    rows = []
    for i in keep:
        row = [ev.names[i], ", ".join(ev.labels_of(i))]
        for column in columns[2:]:
            v = values[column][i]
            row.append(None if np.isnan(v) else round(float(v), 1))
        rows.append(row)
    return rows


def extremes(ev: Evaluation) -> dict[str, tuple[tuple[str, float] | None, tuple[str, float] | None]]:
    """For each gain: the (image, gain) where it is largest and where it is smallest."""
    out = {}
    for column, _, _ in GAINS:
        gain = ev.gain(column)[: ev.done]
        if np.isfinite(gain).any():
            best, worst = int(np.nanargmax(gain)), int(np.nanargmin(gain))
            out[column] = ((ev.names[best], float(gain[best])), (ev.names[worst], float(gain[worst])))
        else:
            out[column] = (None, None)
    return out


def write_csv(ev: Evaluation, rows: list[list], folder: Path | None = None) -> Path:
    """The table as CSV (in a fresh temp folder, which Gradio serves)."""
    import csv
    import uuid

    folder = folder or Path(tempfile.gettempdir()) / "afa_exports" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    dataset = ev.info.get("dataset", "dataset").replace("/", "_").replace("@", "_")
    path = folder / f"afa_{dataset}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table_columns(ev))
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    return path
