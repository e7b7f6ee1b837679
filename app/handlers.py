"""Event handlers of the analysis tabs: small named functions that return named views.

Every handler returns a ``dict`` mapping a view name (see ``INSPECT_VIEWS`` ...) to a value;
``app.ui`` turns it into the tuple Gradio expects and leaves views not mentioned unchanged. The
maps come from a cached ``core.analyze`` result; a click only indexes into it (no model call).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np

from app import plots, render
from app.backend import BACKEND, CheckpointInfo, expected_errors
from app.cache import ANALYSES, analysis_key, image_digest
from app.state import Session

log = logging.getLogger("afa_app")

# Long side images are analysed at (set by app.ui.build_app: 512 locally, 384 in public mode, where
# a CPU Space analyses a 512 px image in 15-30 s; AFA_APP_MAX_SIDE overrides both).
MAX_SIDE = int(os.environ.get("AFA_APP_MAX_SIDE", "512"))
SCALES = (1.0, 0.5, 1.5)
THUMB_SIDE = 176  # long side of head / PAR-step tiles

INSPECT_VIEWS = (
    "status",
    "cam_class",
    "labels",
    "cam_cnn",
    "cam_afa",
    "cam_note",
    "label_cam",
    "label_par",
    "label_mhsa",
    "label_afa",
    "seg",
    "seg_note",
    "scores",
    "legend",
    "crf",
)
AFFINITY_VIEWS = ("aff_click", "aff_learned", "aff_mhsa", "aff_note")
HEADS_VIEWS = ("heads_click", "heads_block", "heads_grid", "heads_note")
PAR_VIEWS = ("par_class", "par_step", "par_image", "par_strip", "par_note")
ALL_VIEWS = ("session",) + INSPECT_VIEWS + AFFINITY_VIEWS + HEADS_VIEWS + PAR_VIEWS


class UserError(Exception):
    """A problem the user can fix; its message is shown as is."""


# --------------------------------------------------------------------------------------------
# error handling


def guarded(handler: Callable[..., dict] | None = None, *, status: str = "status"):
    """Turn any failure into a one-line ``status`` view (and a toast); log unexpected ones with a
    traceback on the server. Use as ``@guarded`` or ``@guarded(status="train_status")``."""
    if handler is None:
        return functools.partial(guarded, status=status)

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point is that nothing escapes to the UI
            message = user_message(exc)
            if not isinstance(exc, (UserError,) + expected_errors()) and not _is_oom(exc):
                log.exception("unexpected error in %s", handler.__name__)
            gr.Warning(message)
            return {status: f"⚠️ {message}"}

    return wrapper


def user_message(exc: BaseException) -> str:
    """One short line for the UI, never a traceback."""
    if _is_oom(exc):
        return "Out of memory while analysing this image; try a smaller image (or fewer users at once)."
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 240:
        text = text[:237] + "..."
    if isinstance(exc, (UserError,) + expected_errors()):
        return text
    return f"Something went wrong ({type(exc).__name__}: {text}). It has been logged."


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# --------------------------------------------------------------------------------------------
# checkpoints


class CheckpointRegistry:
    """The checkpoints a browser may name, refreshed from disk on demand."""

    def __init__(self):
        self._items: dict[str, CheckpointInfo] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[CheckpointInfo]:
        found = BACKEND.discover()
        with self._lock:
            self._items = {info.id: info for info in found}
        return found

    def all(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items.values())

    def resolve(self, checkpoint_id: str | None) -> CheckpointInfo | None:
        if not checkpoint_id:
            return None
        with self._lock:
            info = self._items.get(checkpoint_id)
        if info is None:
            self.refresh()
            with self._lock:
                info = self._items.get(checkpoint_id)
        if info is None:
            raise UserError(f"Checkpoint '{checkpoint_id}' is not available any more; pick another one.")
        return info

    def choices(self, kind: str) -> list[tuple[str, str]]:
        """``(label, id)`` pairs of one model kind; names starting with the kind come first."""
        items = [info for info in self.all() if info.kind == kind]
        items.sort(key=lambda i: (not i.path.stem.startswith(kind + "_"), "runs/" in i.id, i.id))
        return [(info.label, info.id) for info in items]

    def default(self, kind: str) -> str | None:
        choices = self.choices(kind)
        return choices[0][1] if choices else None


CHECKPOINTS = CheckpointRegistry()


# --------------------------------------------------------------------------------------------
# analysis (the only place that calls the model)


def _analyse(session: Session, which: str, labels: tuple[str, ...] | None) -> Any:
    """The cached analysis of ``session.image`` by the ``which`` ("afa"/"cnn") checkpoint."""
    info = CHECKPOINTS.resolve(session.afa_id if which == "afa" else session.cnn_id)
    if info is None or session.image is None:
        return None, None
    crf = session.crf and which == "afa"
    key = analysis_key(session.image_hash, info.path, labels, SCALES, crf)

    def compute():
        plain = (
            ANALYSES.get(analysis_key(session.image_hash, info.path, labels, SCALES, False)) if crf else None
        )
        if plain is not None:  # the CRF works from the cached probabilities: no model call
            return BACKEND.add_crf(plain)
        model = BACKEND.load_model(info.path)
        return BACKEND.analyze(
            model, session.image, list(labels) if labels is not None else None, SCALES, crf
        )

    analysis, _ = ANALYSES.get_or_compute(key, compute)
    return analysis, key


def _cnn_labels(session: Session, afa: Any) -> tuple[str, ...] | None:
    """The CNN is asked for the same image-level labels as the Transformer, so both CAMs cover
    the same classes (its own predictions still show in the score chart)."""
    if session.labels is not None:
        return session.labels
    if afa is None:
        return None
    return tuple(afa.classes[int(c)] for c in afa.present)


def analyse_session(session: Session, progress: Callable | None = None) -> Session:
    """Run (or fetch) both analyses; returns the session with the cache keys filled in."""
    progress = progress or (lambda *a, **k: None)
    keys: dict[str, tuple] = {}
    progress(0.2, desc="Transformer (AFA) analysis")
    afa, keys["afa"] = _analyse(session, "afa", session.labels)
    if keys["afa"] is None:
        keys.pop("afa")
    if session.cnn_id:
        progress(0.6, desc="CNN CAM analysis")
        cnn_labels = _cnn_labels(session, afa)
        if afa is not None and cnn_labels is not None:
            cnn_info = CHECKPOINTS.resolve(session.cnn_id)
            cnn_labels = (
                tuple(n for n in cnn_labels if n in cnn_info.classes) if cnn_info.classes else cnn_labels
            )
        _, cnn_key = _analyse(session, "cnn", cnn_labels)
        if cnn_key is not None:
            keys["cnn"] = cnn_key
    progress(0.9, desc="rendering")
    return session.evolve(keys=keys)


def cached(session: Session, which: str) -> Any:
    """The analysis behind ``session.keys[which]``; recomputed only if the shared cache dropped it."""
    key = session.keys.get(which)
    if key is None:
        return None
    analysis = ANALYSES.get(key)
    if analysis is None:
        labels = key[2]
        analysis, _ = _analyse(session, which, labels)
    return analysis


# --------------------------------------------------------------------------------------------
# small helpers


def token_at(point: tuple[int, int], image_shape: tuple[int, ...], grid: tuple[int, int]) -> tuple[int, int]:
    """The token ``(row, col)`` of an ``(h, w)`` grid laid evenly over the image that covers pixel
    ``point = (x, y)``."""
    height, width = image_shape[:2]
    x = min(max(int(point[0]), 0), width - 1)
    y = min(max(int(point[1]), 0), height - 1)
    return min(y * grid[0] // height, grid[0] - 1), min(x * grid[1] // width, grid[1] - 1)


def token_box(token: tuple[int, int], image_shape: tuple[int, ...], grid: tuple[int, int]):
    height, width = image_shape[:2]
    r, c = token
    return (
        c * width // grid[1],
        r * height // grid[0],
        (c + 1) * width // grid[1],
        (r + 1) * height // grid[0],
    )


def _mode(smooth: bool) -> str:
    return "bilinear" if smooth else "nearest"


def _class_name(classes: list[str], class_id: int) -> str:
    return classes[class_id] if 0 <= class_id < len(classes) else f"class {class_id}"


def _status(session: Session, afa: Any, cnn: Any, extra: str = "") -> str:
    if afa is None:
        return "Upload an image or pick an example."
    parts = []
    afa_info = CHECKPOINTS.resolve(session.afa_id)
    names = [afa.classes[int(c)] for c in afa.present]
    source = "your labels" if afa.labels_source == "given" else "predicted labels"
    parts.append(
        f"**{afa_info.label if afa_info else 'model'}** · {afa.image.shape[1]}×{afa.image.shape[0]} px · "
        f"{source}: {', '.join(names) if names else 'none (no class scored above 0.5)'}"
    )
    timings = afa.timings or {}
    total = timings.get("total") or sum(v for v in timings.values() if isinstance(v, (int, float)))
    if cnn is not None and (cnn.timings or {}).get("total"):
        total += cnn.timings["total"]
    if total:
        parts.append(f"analysed in {total:.1f} s (cached: clicks and sliders are instant)")
    if cnn is None and session.cnn_id is None:
        parts.append("no CNN checkpoint: the CNN CAM is not shown")
    notes = list(session.image_notes) + list(afa.notes or [])
    if notes:
        parts.append("; ".join(notes))
    if extra:
        parts.append(extra)
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# views


def default_class(analysis: Any) -> int | None:
    if analysis is None:
        return None
    if len(analysis.present):
        return int(analysis.present[0])
    return int(np.argmax(analysis.scores)) + 1 if len(analysis.scores) else None


def _cam_view(image: np.ndarray, analysis: Any, class_name: str, opacity: float, model: str) -> np.ndarray:
    if analysis is None:
        return render.placeholder(f"no {model} checkpoint selected", image.shape[:2])
    if analysis.cam is None:
        return render.placeholder(f"the {model} model gives no CAM", image.shape[:2])
    if class_name not in analysis.classes:
        return render.placeholder(f"the {model} model has no class '{class_name}'", image.shape[:2])
    cam = analysis.cam[analysis.classes.index(class_name) - 1]
    return render.overlay_heatmap(image, cam, opacity, 0.0, 1.0, mode="bilinear")


def inspect_views(
    session: Session, afa: Any, cnn: Any, class_id: int | None, opacity: float, show_crf: bool
) -> dict:
    """CAM comparison, the four label maps, the segmentation, scores and legend."""
    if afa is None:
        blank = None
        return {
            "cam_cnn": blank,
            "cam_afa": blank,
            "cam_note": "",
            "label_cam": blank,
            "label_par": blank,
            "label_mhsa": blank,
            "label_afa": blank,
            "seg": blank,
            "seg_note": "",
            "scores": None,
            "legend": "",
            "cam_class": gr.update(choices=[], value=None),
            "labels": gr.update(choices=[], value=[]),
        }
    image = afa.image
    classes = list(afa.classes)
    present = [int(c) for c in afa.present]
    if class_id is None or not 1 <= int(class_id) < len(classes):
        class_id = default_class(afa)
    class_id = int(class_id) if class_id is not None else 1
    class_name = _class_name(classes, class_id)
    views: dict[str, Any] = {
        "cam_class": gr.update(
            choices=[
                (n if i in present else f"{n} (not in labels)", i) for i, n in enumerate(classes) if i > 0
            ],
            value=class_id,
        ),
        "labels": gr.update(choices=classes[1:], value=[classes[c] for c in present]),
        "cam_cnn": _cam_view(image, cnn, class_name, opacity, "CNN"),
        "cam_afa": _cam_view(image, afa, class_name, opacity, "Transformer"),
    }
    note = f"CAM of **{class_name}**, normalised to [0, 1]. " + render.colourbar_html(0.0, 1.0, label="CAM")
    if class_id not in present:
        note = (
            f"**{class_name}** is not among the image-level labels, so its CAM is zeroed: tick it under "
            f"*Image-level labels* and press *Apply labels* to see it. "
        ) + note
    views["cam_note"] = note
    label_fields = {
        "label_cam": ("cam_label", "CAM label"),
        "label_par": ("par_label", "PAR label"),
        "label_mhsa": ("rw_mhsa_label", "MHSA-propagated label"),
        "label_afa": ("rw_afa_label", "AFA-propagated label"),
    }
    shown_ids: set[int] = set()
    for view, (field, title) in label_fields.items():
        label = getattr(afa, field, None)
        if label is None:
            views[view] = render.placeholder(f"this model gives no {title}", image.shape[:2])
        else:
            views[view] = render.overlay_labels(image, label, opacity)
            shown_ids.update(int(v) for v in np.unique(label))
    seg, seg_note = afa.seg_label, "Segmentation branch (multi-scale, flipped)."
    if show_crf:
        if afa.seg_crf_label is not None:
            seg, seg_note = afa.seg_crf_label, "Segmentation refined by a dense CRF."
        else:
            seg_note = "The CRF result is not available; showing the plain segmentation."
    if seg is None:
        views["seg"] = render.placeholder("this model has no segmentation decoder", image.shape[:2])
        seg_note = "This checkpoint has no decoder (CAM only)."
    else:
        views["seg"] = render.overlay_labels(image, seg, opacity)
        shown_ids.update(int(v) for v in np.unique(seg))
    views["seg_note"] = seg_note
    series = {"Transformer": afa.scores}
    if cnn is not None and list(cnn.classes) == classes:
        series["CNN"] = cnn.scores
    views["scores"] = plots.scores_figure(classes, series, present)
    views["legend"] = render.legend_html(classes, sorted(shown_ids | {0}), "Legend")
    return views


def affinity_views(session: Session, afa: Any, opacity: float, smooth: bool) -> dict:
    """The clicked pixel's row of the learned affinity and of the MHSA baseline."""
    if afa is None:
        return {"aff_click": None, "aff_learned": None, "aff_mhsa": None, "aff_note": ""}
    image, point = afa.image, session.point or _centre(afa.image)
    clicked = render.draw_marker(image, point)
    if afa.affinity is None or afa.grid is None:
        blank = render.placeholder("this model has no attention, so no affinity", image.shape[:2])
        return {
            "aff_click": clicked,
            "aff_learned": blank,
            "aff_mhsa": blank,
            "aff_note": "The selected checkpoint has no attention (CNN or affinity head off).",
        }
    grid = tuple(int(v) for v in afa.grid)
    row, col = token_at(point, image.shape, grid)
    index = row * grid[1] + col
    learned = np.asarray(afa.affinity[index], dtype=np.float32).reshape(grid)
    mode = _mode(smooth)
    views = {
        "aff_click": render.draw_token_box(clicked, token_box((row, col), image.shape, grid)),
        "aff_learned": render.draw_marker(
            render.overlay_heatmap(image, learned, opacity, 0.0, 1.0, mode=mode), point
        ),
    }
    mhsa_note = ""
    if afa.mhsa is not None:
        mhsa = np.asarray(afa.mhsa[index], dtype=np.float32).reshape(grid)
        lo, hi = float(mhsa.min()), float(mhsa.max())
        # attention rows sum to 1, so their values are tiny: stretch each row over the colour scale
        views["aff_mhsa"] = render.draw_marker(
            render.overlay_heatmap(image, mhsa, opacity, lo, max(hi, lo + 1e-12), mode=mode), point
        )
        mhsa_note = f"MHSA attention {lo:.2g}–{hi:.2g} (stretched to the colour scale). "
    else:
        views["aff_mhsa"] = render.placeholder("no MHSA map for this model", image.shape[:2])
    views["aff_note"] = (
        f"Pixel ({point[0]}, {point[1]}) → token (row {row}, col {col}) of the {grid[0]}×{grid[1]} grid. "
        f"Learned affinity {learned.min():.3f}–{learned.max():.3f} (colour scale 0–1). {mhsa_note}"
        + render.colourbar_html(0.0, 1.0, label="affinity")
    )
    return views


def block_choices(afa: Any) -> list[tuple[str, int]]:
    choices = []
    for n, block in enumerate(afa.attention or []):
        heads = block.attn.shape[0]
        choices.append(
            (
                f"stage {block.stage + 1} · block {block.index + 1} · {heads} head{'s' * (heads > 1)} · "
                f"queries {block.grid[0]}×{block.grid[1]}, keys {block.kv_grid[0]}×{block.kv_grid[1]}",
                n,
            )
        )
    return choices


def heads_views(session: Session, afa: Any, block: int | None, smooth: bool) -> dict:
    """Every head's attention from the clicked pixel's token, for one block."""
    if afa is None:
        return {
            "heads_click": None,
            "heads_grid": None,
            "heads_note": "",
            "heads_block": gr.update(choices=[], value=None),
        }
    image, point = afa.image, session.point or _centre(afa.image)
    clicked = render.draw_marker(image, point)
    if not afa.attention:
        return {
            "heads_click": clicked,
            "heads_block": gr.update(choices=[], value=None),
            "heads_grid": render.placeholder("this model has no attention heads", image.shape[:2]),
            "heads_note": "The selected checkpoint has no attention blocks (CNN).",
        }
    choices = block_choices(afa)
    if block is None or not 0 <= int(block) < len(afa.attention):
        block = len(afa.attention) - 1
    block = int(block)
    attention = afa.attention[block]
    grid, kv_grid = tuple(attention.grid), tuple(attention.kv_grid)
    row, col = token_at(point, image.shape, grid)
    maps = np.asarray(attention.attn[:, row * grid[1] + col, :], dtype=np.float32).reshape(-1, *kv_grid)
    thumb = render.resize_long_side(image, THUMB_SIDE)
    scale = thumb.shape[1] / image.shape[1]
    thumb_point = (int(point[0] * scale), int(point[1] * scale))
    mode = _mode(smooth)
    tiles, titles = [], []
    for head, values in enumerate(maps):
        low, top = float(values.min()), float(values.max())
        tiles.append(
            render.draw_marker(
                render.overlay_heatmap(thumb, values, 0.6, low, max(top, low + 1e-12), mode=mode), thumb_point
            )
        )
        titles.append(f"head {head + 1}  max {top:.3f}")
    columns = min(len(tiles), 4)
    note = (
        f"Stage {attention.stage + 1}, block {attention.index + 1}: softmax attention of query token "
        f"(row {row}, col {col}) of {grid[0]}×{grid[1]} over {kv_grid[0]}×{kv_grid[1]} keys"
        + (" (spatial reduction)" if kv_grid != grid else "")
        + ". Each head is stretched from its own minimum to its maximum."
    )
    return {
        "heads_click": render.draw_token_box(clicked, token_box((row, col), image.shape, grid)),
        "heads_block": gr.update(choices=choices, value=block),
        "heads_grid": render.tile_grid(tiles, titles, columns),
        "heads_note": note,
    }


def par_views(afa: Any, class_id: int | None, step: int | None, opacity: float = 0.6) -> dict:
    """The chosen class's score map after PAR iteration ``step`` (0 = before PAR), and all steps."""
    if afa is None or afa.par_steps is None or afa.par_channels is None:
        note = "" if afa is None else "This model gives no PAR steps."
        return {
            "par_class": gr.update(choices=[], value=None),
            "par_step": gr.update(maximum=1, value=0),
            "par_image": None,
            "par_strip": None,
            "par_note": note,
        }
    image = afa.image
    channels = [int(c) for c in afa.par_channels]
    choices = [(_class_name(afa.classes, c), c) for c in channels]
    if class_id is None or int(class_id) not in channels:
        foreground = [c for c in channels if c != 0]
        class_id = foreground[0] if foreground else channels[0]
    class_id = int(class_id)
    k = channels.index(class_id)
    last = afa.par_steps.shape[0] - 1
    step = int(min(max(int(step or 0), 0), last))
    maps = np.asarray(afa.par_steps[:, k], dtype=np.float32)
    lo, hi = float(maps.min()), float(maps.max())
    hi = hi if hi > lo else lo + 1e-6
    thumb = render.resize_long_side(image, THUMB_SIDE)
    strip = render.tile_grid(
        [render.overlay_heatmap(thumb, m, 0.65, lo, hi) for m in maps],
        [f"step {t}" if t else "before PAR" for t in range(last + 1)],
        columns=min(6, last + 1),
    )
    change = float(np.abs(maps[step] - maps[0]).mean())
    note = (
        f"**{_class_name(afa.classes, class_id)}**, "
        f"{'before PAR' if step == 0 else f'after {step} of {last} PAR iterations'}"
        f"; mean change from the start {change:.4f}. Colour scale {lo:.3f}–{hi:.3f} (same for all steps). "
        + render.colourbar_html(lo, hi)
    )
    return {
        "par_class": gr.update(choices=choices, value=class_id),
        "par_step": gr.update(minimum=0, maximum=last, value=step),
        "par_image": render.overlay_heatmap(image, maps[step], opacity, lo, hi),
        "par_strip": strip,
        "par_note": note,
    }


def _centre(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1] // 2, image.shape[0] // 2


def all_views(session: Session, afa: Any, cnn: Any, settings: dict, extra_status: str = "") -> dict:
    views = {"session": session, "status": _status(session, afa, cnn, extra_status)}
    views.update(
        inspect_views(session, afa, cnn, settings.get("class_id"), settings.get("opacity", 0.5), session.crf)
    )
    views.update(affinity_views(session, afa, settings.get("opacity", 0.5), settings.get("smooth", False)))
    views.update(heads_views(session, afa, settings.get("block"), settings.get("smooth", False)))
    views.update(
        par_views(afa, settings.get("par_class"), settings.get("par_step", 0), settings.get("opacity", 0.6))
    )
    return views


# --------------------------------------------------------------------------------------------
# the handlers wired to events


def _settings(class_id=None, opacity=0.5, block=None, smooth=False, par_class=None, par_step=0) -> dict:
    return {
        "class_id": class_id,
        "opacity": float(opacity if opacity is not None else 0.5),
        "block": block,
        "smooth": bool(smooth),
        "par_class": par_class,
        "par_step": par_step,
    }


@guarded
def on_image(
    source: Any,
    afa_id: str | None,
    cnn_id: str | None,
    crf: bool,
    opacity: float,
    smooth: bool,
    session: Session | None,
    progress: Any = None,
) -> dict:
    """A new image (upload, example, paste): read it with core.io, analyse, render every view."""
    session = session or Session()
    progress = progress or (lambda *a, **k: None)
    if source is None:
        fresh = Session(afa_id=afa_id, cnn_id=cnn_id, crf=bool(crf))
        return all_views(fresh, None, None, _settings(opacity=opacity, smooth=smooth))
    if not afa_id:
        raise UserError(
            "No Transformer checkpoint is available: put one in checkpoints/ or train one in the Train tab."
        )
    progress(0.05, desc="reading the image")
    try:
        image, notes = BACKEND.read_image(source, MAX_SIDE)
    except expected_errors() as exc:
        if isinstance(source, str) and source in str(exc):  # never show the server's upload folder
            raise UserError(str(exc).replace(source, os.path.basename(source))) from exc
        raise
    session = Session(
        image=image,
        image_hash=image_digest(image),
        image_notes=list(notes),
        afa_id=afa_id,
        cnn_id=cnn_id or None,
        labels=None,
        crf=bool(crf),
        point=_centre(image),
    )
    return _analyse_and_render(session, _settings(opacity=opacity, smooth=smooth), progress)


def _analyse_and_render(session: Session, settings: dict, progress: Callable, extra: str = "") -> dict:
    try:
        session = analyse_session(session, progress)
    except RuntimeError as exc:
        if not session.crf or _is_oom(exc):
            raise
        # CRF unavailable (pydensecrf missing): analyse without it and say so.
        session = analyse_session(session.evolve(crf=False), progress)
        extra = f"CRF unavailable ({' '.join(str(exc).split())[:160]}); showing the segmentation without CRF."
        gr.Warning(extra)
        views = all_views(session, cached(session, "afa"), cached(session, "cnn"), settings, extra)
        views["crf"] = False
        return views
    return all_views(session, cached(session, "afa"), cached(session, "cnn"), settings, extra)


@guarded
def on_model_change(
    afa_id: str | None,
    cnn_id: str | None,
    class_id,
    opacity: float,
    smooth: bool,
    session: Session | None,
    progress: Any = None,
) -> dict:
    """Another checkpoint picked: re-analyse the current image with it (cached per checkpoint)."""
    session = session or Session()
    session = session.evolve(afa_id=afa_id or None, cnn_id=cnn_id or None)
    if session.image is None:
        return {"session": session}
    if not afa_id:
        raise UserError("Pick a Transformer checkpoint.")
    return _analyse_and_render(
        session,
        _settings(class_id=class_id, opacity=opacity, smooth=smooth),
        progress or (lambda *a, **k: None),
    )


@guarded
def on_labels_override(
    labels: list[str] | None,
    class_id,
    opacity: float,
    smooth: bool,
    session: Session | None,
    progress: Any = None,
) -> dict:
    """Analyse again with the user's image-level labels (``None`` = go back to predicted labels)."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first.")
    afa = cached(session, "afa")
    if labels is not None:
        unknown = [n for n in labels if n not in afa.classes[1:]]
        if unknown:
            raise UserError(f"Unknown class name(s): {', '.join(unknown)}.")
        labels = tuple(n for n in afa.classes[1:] if n in labels)  # keep the model's order
    session = session.evolve(labels=labels)
    extra = "" if labels is None else ("no labels ticked: every CAM is zero" if not labels else "")
    return _analyse_and_render(
        session,
        _settings(class_id=class_id, opacity=opacity, smooth=smooth),
        progress or (lambda *a, **k: None),
        extra,
    )


@guarded
def on_crf_toggle(
    crf: bool, class_id, opacity: float, smooth: bool, session: Session | None, progress: Any = None
) -> dict:
    """CRF on: the analysis with ``crf=True`` (cached separately); off: the plain segmentation."""
    session = (session or Session()).evolve(crf=bool(crf))
    if not session.ready:
        return {"session": session}
    views = _analyse_and_render(
        session,
        _settings(class_id=class_id, opacity=opacity, smooth=smooth),
        progress or (lambda *a, **k: None),
    )
    keep = ("session", "status", "seg", "seg_note", "crf", "legend")
    return {k: v for k, v in views.items() if k in keep}


@guarded
def on_click(
    session: Session | None, point: tuple[int, int] | list[int] | None, block, opacity: float, smooth: bool
) -> dict:
    """A pixel was clicked: its affinity, MHSA and per-head attention rows. No model call."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first, then click on it.")
    if point is None or len(point) < 2:
        return {}
    afa = cached(session, "afa")
    height, width = afa.image.shape[:2]
    point = (min(max(int(point[0]), 0), width - 1), min(max(int(point[1]), 0), height - 1))
    session = session.evolve(point=point)
    views = {"session": session}
    views.update(affinity_views(session, afa, opacity, smooth))
    views.update(heads_views(session, afa, block, smooth))
    views.pop("heads_block", None)  # unchanged by a click
    return views


@guarded
def on_class_change(class_id, opacity: float, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    views = inspect_views(session, afa, cnn, class_id, opacity, session.crf)
    return {k: views[k] for k in ("cam_cnn", "cam_afa", "cam_note")}


@guarded
def on_opacity(opacity: float, class_id, smooth: bool, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    views = inspect_views(session, afa, cnn, class_id, opacity, session.crf)
    views.pop("cam_class")
    views.pop("labels")
    views.pop("scores")
    views.update(affinity_views(session, afa, opacity, smooth))
    return views


@guarded
def on_smooth(smooth: bool, block, opacity: float, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    afa = cached(session, "afa")
    views = affinity_views(session, afa, opacity, smooth)
    views.update(heads_views(session, afa, block, smooth))
    views.pop("heads_block", None)
    return views


@guarded
def on_block_change(block, smooth: bool, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    views = heads_views(session, cached(session, "afa"), block, smooth)
    views.pop("heads_block", None)
    return views


@guarded
def on_par_class(class_id, step, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    views = par_views(cached(session, "afa"), class_id, step)
    views.pop("par_class", None)
    return views


@guarded
def on_par_step(class_id, step, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    views = par_views(cached(session, "afa"), class_id, step)
    return {k: views[k] for k in ("par_image", "par_note")}


def timed(fn: Callable, *args, repeat: int = 5, **kwargs) -> tuple[Any, float]:
    """``(result, median seconds)`` of calling ``fn``: used by tests and the status line."""
    times, result = [], None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))
