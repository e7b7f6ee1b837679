"""One analysis as a zip file, built from the cached analyses (no model call).

Inside ``afa_<image>.zip`` (the README's app section lists the same):

- ``analysis.json``: scores (per stage mIoU, pixel accuracy and per-class IoU, when the image has
  ground truth), labels (used, where from, true, predicted), class probabilities, checkpoint(s)
  and what they were trained on, settings, timings, and the list of files;
- ``arrays.npz``: the raw arrays of ``core.analyze`` (``image``, ``cam``, every label map,
  ``seg_probs``, ``par_steps``, ``affinity``, ``mhsa``, ``scores``, ``attention_<block>``...),
  the ground truth in the model's class ids, and the CNN's CAM, labels and scores as ``cnn_*``;
- ``image.png``; ``ground_truth.png``; ``labels/<stage>.png``: label maps as palette PNGs of
  class ids (the VOC palette; 255 = ignore), at the image's size;
- ``cam/<class>.png`` (and ``cnn/cam_<class>.png``): CAMs as 8-bit grey (0-255 = 0-1), for the
  classes analysed;
- ``overlays/*.png``: what the app shows (maps over the image at display size), and
  ``errors/<stage>.png``: each stage's errors against the ground truth.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app import analysis as orchestration
from app import maps, render
from app import truth as gt
from app.analysis import cached
from app.checkpoints import CHECKPOINTS, describe_domain
from app.state import Session
from core.evaluate import STAGES

EXPORT_DIR = Path(tempfile.gettempdir()) / "afa_exports"
KEEP_SECONDS = 3600  # older exports are deleted when a new one is written
ARRAYS = ("image", "cam", "par_steps", "par_channels", "affinity", "mhsa", "seg_probs", "scores", "present")


def _png(array: np.ndarray, palette: bool = False) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(array))
    if palette:
        from core.io import voc_palette

        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(voc_palette().ravel().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"


def _checkpoint_record(checkpoint_id: str | None) -> dict | None:
    info = CHECKPOINTS.resolve(checkpoint_id) if checkpoint_id else None
    if info is None:
        return None
    meta = info.meta
    return {
        "id": info.id,
        "label": info.label,
        "model": meta.get("model"),
        "step": meta.get("step"),
        "classes": list(info.classes),
        "data": meta.get("data"),
        "domain": describe_domain(info),
    }


def analysis_record(session: Session, afa: Any, cnn: Any, files: list[str]) -> dict:
    """The JSON of an export: what was analysed, how, with what result."""
    scores = gt.stage_scores(afa, session.truth)
    mask, unknown = gt.for_model(session.truth, afa.classes)
    predicted = [afa.classes[i + 1] for i in np.flatnonzero(np.asarray(afa.scores) > 0.5)]
    if session.truth is None:
        scores_note = "no ground truth for this image"
    elif mask is None:
        scores_note = f"the ground truth has classes the checkpoint does not know: {', '.join(unknown)}"
    else:
        scores_note = f"against the ground truth of {session.truth.source}"
    return {
        "image": {
            "name": session.truth.name if session.truth is not None else "",
            "width": int(afa.image.shape[1]),
            "height": int(afa.image.shape[0]),
            "notes": list(session.image_notes) + list(afa.notes or []),
        },
        "checkpoint": _checkpoint_record(session.afa_id),
        "cnn_checkpoint": _checkpoint_record(session.cnn_id),
        "labels": {
            "used": [afa.classes[int(c)] for c in afa.present],
            "source": "predicted" if afa.labels_source != "given" else session.label_mode,
            "true": list(session.truth.label_names) if session.truth is not None else None,
            "predicted": predicted,
        },
        "class_scores": {name: float(p) for name, p in zip(afa.classes[1:], afa.scores)},
        "cnn_class_scores": (
            {name: float(p) for name, p in zip(cnn.classes[1:], cnn.scores)} if cnn is not None else None
        ),
        "scores": {stage: cm.as_dict(afa.classes) for stage, cm in scores.items()} or None,
        "scores_note": scores_note,
        "settings": {
            **{k: v for k, v in afa.meta.items() if k not in ("checkpoint",)},
            "pseudo_labels": "dense (as core.evaluate scores)" if session.dense else "training (ignore band)",
            "max_side": orchestration.MAX_SIDE,
        },
        "timings": dict(afa.timings or {}),
        "cnn_timings": dict(cnn.timings or {}) if cnn is not None else None,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }


def zip_entries(session: Session, opacity: float) -> dict[str, bytes]:
    """Every file of the export except ``analysis.json``: ``{name in the zip: bytes}``."""
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    truth = session.truth.resized(afa.image.shape) if session.truth is not None else None
    out: dict[str, bytes] = {"image.png": _png(afa.image)}
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAYS:
        value = getattr(afa, name, None)
        if value is not None:
            arrays[name] = np.asarray(value)
    for block in afa.attention or []:
        arrays[f"attention_{block.index}"] = block.attn
    shown = render.for_display(afa.image)
    for stage in STAGES:
        label = getattr(afa, stage, None)
        if label is None:
            continue
        arrays[stage] = np.asarray(label)
        out[f"labels/{stage}.png"] = _png(np.asarray(label, dtype=np.uint8), palette=True)
        out[f"overlays/{stage}.png"] = _png(render.overlay_labels(shown, label, opacity))
        errors = gt.errors(afa, truth, stage)
        if errors is not None:
            out[f"errors/{stage}.png"] = _png(render.overlay_errors(shown, errors, opacity))
    if truth is not None:
        mask, _ = gt.for_model(truth, afa.classes)
        mask = truth.mask if mask is None else mask
        arrays["ground_truth"] = mask
        out["ground_truth.png"] = _png(mask, palette=True)
        out["overlays/ground_truth.png"] = _png(maps.truth_panel(afa, truth, opacity)[0])
    for cam_file, overlay_file, analysis in (
        ("cam/", "overlays/cam_", afa),
        ("cnn/cam_", "overlays/cnn_cam_", cnn),
    ):
        if analysis is None or analysis.cam is None:
            continue
        for class_id in analysis.present:
            name = _safe(analysis.classes[int(class_id)])
            cam = np.asarray(analysis.cam[int(class_id) - 1], dtype=np.float32)
            out[f"{cam_file}{name}.png"] = _png(np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8))
            out[f"{overlay_file}{name}.png"] = _png(render.overlay_heatmap(shown, cam, opacity, 0.0, 1.0))
    if cnn is not None:
        for name in ("cam", "scores", "present", "cam_label", "par_label"):
            value = getattr(cnn, name, None)
            if value is not None:
                arrays[f"cnn_{name}"] = np.asarray(value)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out["arrays.npz"] = buf.getvalue()
    return out


def write_zip(session: Session, opacity: float = render.DEFAULT_OPACITY) -> Path:
    """Write the export of the session's current analysis; returns the zip's path (in a fresh
    folder under the system's temp directory, which Gradio serves)."""
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    entries = zip_entries(session, opacity)
    files = sorted(["analysis.json", *entries])
    record = analysis_record(session, afa, cnn, files)
    _forget_old_exports()
    folder = EXPORT_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True)
    name = session.truth.name if session.truth is not None and session.truth.name else session.image_hash[:10]
    path = folder / f"afa_{_safe(name)}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("analysis.json", json.dumps(record, indent=1, default=_plain))
        for entry, data in entries.items():
            # PNGs and the npz are compressed already
            zf.writestr(entry, data, compress_type=zipfile.ZIP_STORED)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _forget_old_exports() -> None:
    if not EXPORT_DIR.is_dir():
        return
    now = time.time()
    for folder in EXPORT_DIR.iterdir():
        try:
            if now - folder.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue
