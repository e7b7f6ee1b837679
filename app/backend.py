"""The app's only door into ``core``: reading images, checkpoints, loading models, analysing.

Handlers call ``BACKEND``; tests swap it for a fake that returns fixture analyses, so the UI can
be exercised without a model. Loaded models are kept in a small LRU keyed by file fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.cache import checkpoint_fingerprint
from app.gpu import GpuRunner, make_runner

log = logging.getLogger("afa_app")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
# of every model pass (analyses and dataset evaluations alike): core.precision's auto|fp32|bf16|fp16
PRECISION = os.environ.get("AFA_APP_PRECISION", "auto")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def example_images() -> list[str]:
    """The example images the Inspect tab offers (the app's own assets). An example with ground
    truth has ``NAME.json`` beside it naming its mask (``NAME.png``), which is not an example."""
    if not EXAMPLES_DIR.is_dir():
        return []
    masks = set()
    for descriptor in EXAMPLES_DIR.glob("*.json"):
        try:
            masks.add(str(json.loads(descriptor.read_text()).get("mask", descriptor.stem + ".png")))
        except (OSError, ValueError, AttributeError):
            masks.add(descriptor.stem + ".png")
    return [
        str(p)
        for p in sorted(EXAMPLES_DIR.iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in masks
    ]


def checkpoint_dirs() -> list[Path]:
    """Folders searched for ``*.safetensors``: ``checkpoints/`` or ``AFA_APP_CHECKPOINT_DIRS``
    (os.pathsep-separated; a server-side setting, never something a browser can change)."""
    configured = os.environ.get("AFA_APP_CHECKPOINT_DIRS", "")
    if configured:
        return [Path(p) if Path(p).is_absolute() else ROOT / p for p in configured.split(os.pathsep) if p]
    return [ROOT / "checkpoints"]


def runs_dir() -> Path:
    """Where training runs live: ``runs/`` or ``AFA_APP_RUNS_DIR``."""
    configured = os.environ.get("AFA_APP_RUNS_DIR", "")
    if configured:
        return Path(configured) if Path(configured).is_absolute() else ROOT / configured
    return ROOT / "runs"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint the app may open. ``id`` is a path relative to the app root: the only form
    a browser ever sends back (validated against discovery, never opened blindly)."""

    id: str
    path: Path
    kind: str  # "afa" | "cnn_cam"
    label: str
    classes: tuple[str, ...]
    meta: dict


class CoreBackend:
    """Thin wrappers over core; nothing here computes anything about the method."""

    def __init__(self, max_models: int = 4, gpu: GpuRunner | None = None):
        self.gpu = gpu  # ZeroGPU (app.gpu): models stay on the CPU, analyses run on the granted GPU
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._max_models = max_models
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    def read_image(self, source: Any, max_side: int):
        from core.io import read_image

        return read_image(source, max_side)

    def read_mask(self, path: Path):
        from core.io import read_mask

        return read_mask(path)

    def read_meta(self, path: Path) -> dict:
        from core.checkpoint import read_meta

        return read_meta(path)

    def load_model(self, path: Path):
        key = checkpoint_fingerprint(path)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # two sessions asking for the same model load it once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            import core

            model = core.load_model(str(path), device="cpu" if self.gpu is not None else None)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self._max_models:
                    self._models.popitem(last=False)
                self._load_locks.pop(key, None)
            return model

    def analyze(self, model, image, labels, crf, dense=True):
        """``core.analyze`` at the checkpoint's own CAM scales and the app's precision (on a
        ZeroGPU Space, on the GPU it grants, else on the CPU); ``dense``: pseudo labels as
        ``core.evaluate`` scores them (one background score), else the training labels."""
        import core

        options = dict(dense=dense, precision=PRECISION)

        def on_cpu():
            return core.analyze(model, image, labels=labels, crf=crf, **options)

        if self.gpu is not None:
            return self.gpu.analyze(model, image, labels, crf, on_cpu, **options)
        return on_cpu()

    def evaluation_model(self, path: Path):
        """A model of its own for a dataset evaluation (not shared with the analyses of the
        Inspect tab, which run at the same time in other threads)."""
        import core

        return core.load_model(str(path))

    def open_evaluation(self, checkpoint: Path, root: Path, split: str):
        """``(cfg, dataset)`` as ``python -m core.evaluate`` builds them."""
        from core.evaluate import open_evaluation

        return open_evaluation(checkpoint, root, split)

    def evaluate_images(self, model, dataset, cfg, indices, crf):
        """``core.evaluate.evaluate_images``: one ``ImageEvaluation`` per index, in order."""
        from core.evaluate import evaluate_images

        return evaluate_images(model, dataset, cfg, indices, crf=crf, precision=PRECISION)

    def dataset_classes(self, root: Path) -> list[str]:
        """A dataset folder's class names (background first), from its layout."""
        from core.config import load_config, set_by_path
        from core.data import class_names
        from core.evaluate import infer_dataset_kind

        cfg = load_config()
        set_by_path(cfg, "data.name", infer_dataset_kind(Path(root)))
        set_by_path(cfg, "data.root", str(root))
        return class_names(cfg)

    def add_crf(self, analysis):
        import core

        return core.add_crf(analysis)

    def crf_available(self) -> bool:
        try:
            from core.method.crf import crf_available

            return bool(crf_available())
        except ImportError:
            return False

    def core_available(self) -> bool:
        try:
            import core

            return callable(getattr(core, "analyze", None)) and callable(getattr(core, "load_model", None))
        except Exception:  # noqa: BLE001 - a half-written core must not stop the app from starting
            return False

    def discover(self, include_runs: bool = True) -> list[CheckpointInfo]:
        """Checkpoints in the checkpoint folders and the runs' model checkpoints."""
        from core.errors import UserError
        from core.runstate import CHECKPOINT_FILE, STATE_FILE

        paths = [p for d in checkpoint_dirs() for p in sorted(d.glob("*.safetensors"))]
        if include_runs:
            paths += sorted(runs_dir().glob(f"*/{CHECKPOINT_FILE}"))
        found = []
        for path in paths:
            if path.name.startswith(".") or path.name == STATE_FILE:
                continue
            try:
                meta = self.read_meta(path)
            except UserError as exc:  # one bad file must not hide the others
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the others still listed
                log.exception("internal error reading checkpoint %s", path)
                continue
            if (meta.get("data") or {}).get("encoder_only"):
                continue  # pretrained encoder weights (for model.pretrained), not a model to analyse with
            found.append(describe_checkpoint(path, meta))
        return found


def checkpoint_id(path: Path, root: Path = ROOT) -> str:
    """The name a browser uses for a checkpoint: relative to the app root when inside it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(root.resolve()))
    except ValueError:
        return str(resolved)


def describe_checkpoint(path: Path, meta: dict, root: Path = ROOT) -> CheckpointInfo:
    """The picker's entry of a checkpoint: its name, encoder, step and headline mIoU (core's rule):
    that of its published evaluation when one lies beside it (the shipped models' whole val split),
    else that of its own periodic evaluation during training (a few val images)."""
    from core.evaluate import headline_miou, published_evaluation
    from core.runstate import CHECKPOINT_FILE

    model_cfg = meta.get("model", {}) if isinstance(meta.get("model"), dict) else {}
    kind = str(model_cfg.get("name", "afa"))
    rel = checkpoint_id(path, root)
    in_run = path.name == CHECKPOINT_FILE  # a run folder's: named after the run
    parts = [path.parent.name if in_run else path.stem, str(model_cfg.get("backbone", "?"))]
    if meta.get("step"):
        parts.append(f"step {meta['step']}")
    published = published_evaluation(path)
    if published is not None:
        parts.append(f"mIoU {100 * published[1]:.1f} ({published[0]}, {published[2]})")
    elif (headline := headline_miou((meta.get("metrics") or {}).get("miou"))) is not None:
        parts.append(f"mIoU {100 * headline[1]:.1f} ({headline[0]}, training evaluation)")
    if in_run:
        parts.append("run")
    return CheckpointInfo(
        id=rel,
        path=path,
        kind=kind,
        label=" · ".join(parts),
        classes=tuple(meta.get("classes", ())),
        meta=meta,
    )


BACKEND = CoreBackend(gpu=make_runner())
