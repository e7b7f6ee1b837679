"""The Inspect tab: the image, the checkpoint pickers and the image-level labels (what is
analysed), the CAMs of both models, the four label maps, the segmentation and the class scores.

A new image, checkpoint, label set or CRF choice analyses again (``app.analysis``) and redraws
every analysis tab (``all_views``); the class picker and the opacity slider only redraw.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import numpy as np

from app import affinity_view, heads_view, par_view, plots, render
from app.analysis import analyse_session, cached, new_session
from app.backend import BACKEND
from app.checkpoints import CHECKPOINTS
from app.errors import guarded
from app.state import Session, ViewSettings
from app.wiring import ANALYSIS, PROGRESS, QUICK, connect
from core.errors import UserError

VIEWS = (
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
# an analysis redraws every analysis tab
ALL_VIEWS = ("session",) + VIEWS + affinity_view.VIEWS + heads_view.VIEWS + par_view.VIEWS
LABEL_MAPS = {  # view: (Analysis field, title)
    "label_cam": ("cam_label", "CAM label"),
    "label_par": ("par_label", "PAR label"),
    "label_mhsa": ("rw_mhsa_label", "MHSA-propagated label"),
    "label_afa": ("rw_afa_label", "AFA-propagated label"),
}
CRF_MISSING = (
    "CRF unavailable (pydensecrf is not installed on this server); showing the segmentation without CRF."
)


# --------------------------------------------------------------------------------------------
# layout


def upload_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` that hands the uploaded file to ``core.io.read_image`` untouched, so that a
    corrupt, 16-bit or odd-mode file gets core's clear message instead of failing inside Gradio.

    (The preprocess step is replaced on the instance: subclassing a Gradio component makes Gradio
    write a ``.pyi`` stub next to this module at import time.)"""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    default = image.preprocess

    def pass_path_through(payload):
        if payload is not None and getattr(payload, "path", None):
            return payload.path  # Gradio has already checked that it is an uploaded file
        return default(payload)

    image.preprocess = pass_path_through
    return image


def layout(C: dict, examples: list[str]) -> None:
    crf_ok = BACKEND.crf_available()
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            C["image"] = upload_image(
                label="Image", sources=["upload", "clipboard"], height=280, elem_id="input-image"
            )
            if examples:
                gr.Examples(
                    examples=[[p] for p in examples],
                    inputs=[C["image"]],
                    label="Examples",
                    examples_per_page=8,
                )
            C["afa_ckpt"] = gr.Dropdown(
                CHECKPOINTS.picker_choices("afa"),
                value=CHECKPOINTS.default("afa"),
                label="Transformer checkpoint",
                info="AFA model: CAM, PAR, affinity, attention, segmentation",
            )
            C["cnn_ckpt"] = gr.Dropdown(
                CHECKPOINTS.picker_choices("cnn_cam"),
                value=CHECKPOINTS.default("cnn_cam") or "",
                label="CNN checkpoint",
                info="CNN CAM baseline",
            )
            C["labels"] = gr.CheckboxGroup(
                [], label="Image-level labels", info="Predicted by the model; tick or untick, then Apply."
            )
            with gr.Row():
                C["apply_btn"] = gr.Button("Apply labels", size="sm", variant="primary")
                C["predicted_btn"] = gr.Button("Use predicted", size="sm")
            C["crf"] = gr.Checkbox(
                False,
                label="Dense CRF on the segmentation",
                interactive=crf_ok,
                info=None if crf_ok else "pydensecrf is not installed on this server",
            )
            C["opacity"] = gr.Slider(
                0.0, 1.0, value=render.DEFAULT_OPACITY, step=0.05, label="Overlay opacity"
            )
            C["rescan_btn"] = gr.Button("Rescan checkpoints", size="sm")
        with gr.Column(scale=3):
            C["status"] = gr.Markdown("Upload an image or pick an example.", elem_id="status")
            with gr.Row():
                C["cam_class"] = gr.Dropdown([], label="Class for the CAMs", scale=1)
                C["legend"] = gr.HTML(elem_classes="afa-legend")
            with gr.Row(equal_height=True):
                for view, label, elem_id in (
                    ("cam_cnn", "CNN CAM", "cam-cnn"),
                    ("cam_afa", "Transformer CAM", "cam-afa"),
                ):
                    C[view] = gr.Image(
                        elem_id=elem_id, label=label, interactive=False, format="jpeg", height=300
                    )
            C["cam_note"] = gr.Markdown(elem_classes="afa-note")
            with gr.Row(equal_height=True):
                for view, label in (
                    ("label_cam", "CAM label"),
                    ("label_par", "PAR label"),
                    ("label_mhsa", "MHSA-propagated"),
                    ("label_afa", "AFA-propagated"),
                ):
                    C[view] = gr.Image(
                        elem_id=view.replace("_", "-"), label=label, interactive=False, format="png"
                    )
            with gr.Row():
                with gr.Column():
                    C["seg"] = gr.Image(
                        elem_id="seg", label="Segmentation", interactive=False, format="png", height=300
                    )
                    C["seg_note"] = gr.Markdown(elem_classes="afa-note")
                C["scores"] = gr.Plot(label="Class scores", elem_id="scores")


# --------------------------------------------------------------------------------------------
# views


def default_class(analysis: Any) -> int | None:
    if analysis is None:
        return None
    if len(analysis.present):
        return int(analysis.present[0])
    return int(np.argmax(analysis.scores)) + 1 if len(analysis.scores) else None


def status_line(session: Session, afa: Any, cnn: Any, extra: str = "") -> str:
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


def _cam_view(image: np.ndarray, analysis: Any, class_name: str, opacity: float, model: str) -> np.ndarray:
    if analysis is None:
        return render.placeholder(f"no {model} checkpoint selected", image.shape[:2])
    if analysis.cam is None:
        return render.placeholder(f"the {model} model gives no CAM", image.shape[:2])
    if class_name not in analysis.classes:
        return render.placeholder(f"the {model} model has no class '{class_name}'", image.shape[:2])
    cam = analysis.cam[analysis.classes.index(class_name) - 1]
    return render.overlay_heatmap(image, cam, opacity, 0.0, 1.0, mode="bilinear")


def cam_views(afa: Any, cnn: Any, class_id: int | None, opacity: float) -> dict:
    """Both models' CAM of one class, side by side, and the class picker."""
    classes = list(afa.classes)
    present = [int(c) for c in afa.present]
    if class_id is None or not 1 <= int(class_id) < len(classes):
        class_id = default_class(afa)
    class_id = int(class_id) if class_id is not None else 1
    name = render.class_name(classes, class_id)
    note = f"CAM of **{name}**, normalised to [0, 1]. " + render.colourbar_html(0.0, 1.0, label="CAM")
    if class_id not in present:
        note = (
            f"**{name}** is not among the image-level labels, so its CAM is zeroed: tick it under "
            f"*Image-level labels* and press *Apply labels* to see it. "
        ) + note
    choices = [(n if i in present else f"{n} (not in labels)", i) for i, n in enumerate(classes) if i > 0]
    return {
        "cam_class": gr.update(choices=choices, value=class_id),
        "cam_cnn": _cam_view(afa.image, cnn, name, opacity, "CNN"),
        "cam_afa": _cam_view(afa.image, afa, name, opacity, "Transformer"),
        "cam_note": note,
    }


def views(afa: Any, cnn: Any, settings: ViewSettings, show_crf: bool) -> dict:
    """CAM comparison, the four label maps, the segmentation, scores and legend."""
    if afa is None:
        blank = dict.fromkeys(
            ("cam_cnn", "cam_afa", "label_cam", "label_par", "label_mhsa", "label_afa", "seg")
        )
        return {
            **blank,
            "cam_note": "",
            "seg_note": "",
            "scores": None,
            "legend": "",
            "cam_class": gr.update(choices=[], value=None),
            "labels": gr.update(choices=[], value=[]),
        }
    image, classes, opacity = afa.image, list(afa.classes), settings.opacity
    present = [int(c) for c in afa.present]
    result = cam_views(afa, cnn, settings.class_id, opacity)
    result["labels"] = gr.update(choices=classes[1:], value=[classes[c] for c in present])
    shown_ids: set[int] = set()
    for view, (field, title) in LABEL_MAPS.items():
        label = getattr(afa, field, None)
        if label is None:
            result[view] = render.placeholder(f"this model gives no {title}", image.shape[:2])
        else:
            result[view] = render.overlay_labels(image, label, opacity)
            shown_ids.update(int(v) for v in np.unique(label))
    seg, seg_note = afa.seg_label, "Segmentation branch (multi-scale, flipped)."
    if show_crf:
        if afa.seg_crf_label is not None:
            seg, seg_note = afa.seg_crf_label, "Segmentation refined by a dense CRF."
        else:
            seg_note = "The CRF result is not available; showing the plain segmentation."
    if seg is None:
        result["seg"] = render.placeholder("this model has no segmentation decoder", image.shape[:2])
        seg_note = "This checkpoint has no decoder (CAM only)."
    else:
        result["seg"] = render.overlay_labels(image, seg, opacity)
        shown_ids.update(int(v) for v in np.unique(seg))
    result["seg_note"] = seg_note
    series = {"Transformer": afa.scores}
    if cnn is not None and list(cnn.classes) == classes:
        series["CNN"] = cnn.scores
    result["scores"] = plots.scores_figure(classes, series, present)
    result["legend"] = render.legend_html(classes, sorted(shown_ids | {0}), "Legend")
    return result


def all_views(session: Session, settings: ViewSettings, extra_status: str = "") -> dict:
    """Every analysis tab, drawn from the session's cached analyses."""
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    result = {"session": session, "status": status_line(session, afa, cnn, extra_status)}
    result.update(views(afa, cnn, settings, session.crf))
    result.update(affinity_view.views(session, afa, settings))
    result.update(heads_view.views(session, afa, settings))
    result.update(par_view.views(afa, None, 0))
    return result


# --------------------------------------------------------------------------------------------
# handlers


def _analyse_and_draw(session: Session, settings: ViewSettings, progress, extra: str = "") -> dict:
    crf_off = session.crf and not BACKEND.crf_available()
    if crf_off:
        session, extra = session.evolve(crf=False), CRF_MISSING
        gr.Warning(extra)
    result = all_views(analyse_session(session, progress), settings, extra)
    if crf_off:
        result["crf"] = False
    return result


@guarded
def on_image(
    source: Any,
    afa_id: str | None,
    cnn_id: str | None,
    crf: bool,
    opacity: float,
    smooth: bool,
    session: Session | None,
    progress=PROGRESS,
) -> dict:
    """A new image (upload, example, paste): read it with core.io, analyse, draw every view."""
    settings = ViewSettings(opacity=opacity, smooth=smooth)
    if source is None:
        return all_views(Session(afa_id=afa_id, cnn_id=cnn_id, crf=bool(crf)), settings)
    if not afa_id:
        raise UserError(
            "No Transformer checkpoint is available: put one in checkpoints/ or train one in the Train tab."
        )
    progress(0.05, desc="reading the image")
    return _analyse_and_draw(new_session(source, afa_id, cnn_id, crf), settings, progress)


@guarded
def on_model_change(
    afa_id, cnn_id, class_id, opacity, smooth, session: Session | None, progress=PROGRESS
) -> dict:
    """Another checkpoint picked: re-analyse the current image with it (cached per checkpoint)."""
    session = (session or Session()).evolve(afa_id=afa_id or None, cnn_id=cnn_id or None)
    if session.image is None:
        return {"session": session}
    if not afa_id:
        raise UserError("Pick a Transformer checkpoint.")
    return _analyse_and_draw(session, ViewSettings(class_id, opacity, smooth=smooth), progress)


@guarded
def on_labels_override(labels, class_id, opacity, smooth, session: Session | None, progress=PROGRESS) -> dict:
    """Analyse again with the user's image-level labels (``None`` = go back to predicted labels)."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first.")
    if labels is not None:
        classes = cached(session, "afa").classes[1:]
        unknown = [n for n in labels if n not in classes]
        if unknown:
            raise UserError(f"Unknown class name(s): {', '.join(unknown)}.")
        labels = tuple(n for n in classes if n in labels)  # keep the model's order
    extra = "no labels ticked: every CAM is zero" if labels == () else ""
    return _analyse_and_draw(
        session.evolve(labels=labels), ViewSettings(class_id, opacity, smooth=smooth), progress, extra
    )


@guarded
def on_crf_toggle(
    crf: bool, class_id, opacity: float, smooth: bool, session: Session | None, progress=PROGRESS
) -> dict:
    """CRF on: the analysis with ``crf=True`` (cached separately); off: the plain segmentation."""
    session = (session or Session()).evolve(crf=bool(crf))
    if not session.ready:
        return {"session": session}
    result = _analyse_and_draw(session, ViewSettings(class_id, opacity, smooth=smooth), progress)
    return {k: v for k, v in result.items() if k in ("session", "status", "seg", "seg_note", "crf", "legend")}


@guarded
def on_class_change(class_id, opacity: float, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    result = cam_views(cached(session, "afa"), cached(session, "cnn"), class_id, opacity)
    result.pop("cam_class")  # the user just picked it
    return result


@guarded
def on_opacity(opacity: float, class_id, smooth: bool, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    settings = ViewSettings(class_id, opacity, smooth=smooth)
    afa = cached(session, "afa")
    result = views(afa, cached(session, "cnn"), settings, session.crf)
    for unchanged in ("cam_class", "labels", "scores"):
        result.pop(unchanged)
    result.update(affinity_view.views(session, afa, settings))
    return result


@guarded
def on_rescan() -> dict:
    CHECKPOINTS.refresh()
    afa, cnn = CHECKPOINTS.choices("afa"), CHECKPOINTS.choices("cnn_cam")
    gr.Info(f"{len(afa)} Transformer and {len(cnn)} CNN checkpoints.")
    return {
        "afa_ckpt": gr.update(choices=CHECKPOINTS.picker_choices("afa")),
        "cnn_ckpt": gr.update(choices=CHECKPOINTS.picker_choices("cnn_cam")),
    }


# --------------------------------------------------------------------------------------------
# wiring


def wire(C: dict) -> None:
    draw = ("cam_class", "opacity", "smooth", "session")  # what redrawing needs besides the trigger
    connect(
        C["image"].change,
        on_image,
        C,
        ("image", "afa_ckpt", "cnn_ckpt", "crf", "opacity", "smooth", "session"),
        ALL_VIEWS,
        api_name="analyse",
        **ANALYSIS,
    )
    pickers = ("afa_ckpt", "cnn_ckpt") + draw
    connect(
        C["afa_ckpt"].change, on_model_change, C, pickers, ALL_VIEWS, api_name="set_checkpoint", **ANALYSIS
    )
    connect(
        C["cnn_ckpt"].change, on_model_change, C, pickers, ALL_VIEWS, api_visibility="private", **ANALYSIS
    )
    connect(
        C["apply_btn"].click,
        on_labels_override,
        C,
        ("labels",) + draw,
        ALL_VIEWS,
        api_name="set_labels",
        **ANALYSIS,
    )
    connect(
        C["predicted_btn"].click,
        functools.partial(on_labels_override, None),
        C,
        draw,
        ALL_VIEWS,
        api_visibility="private",
        **ANALYSIS,
    )
    connect(C["crf"].input, on_crf_toggle, C, ("crf",) + draw, ALL_VIEWS, api_name="set_crf", **ANALYSIS)
    connect(
        C["cam_class"].input,
        on_class_change,
        C,
        ("cam_class", "opacity", "session"),
        ("cam_cnn", "cam_afa", "cam_note", "status"),
        api_visibility="private",
        **QUICK,
    )
    connect(
        C["opacity"].release,
        on_opacity,
        C,
        ("opacity", "cam_class", "smooth", "session"),
        VIEWS + affinity_view.VIEWS,
        api_visibility="private",
        **QUICK,
    )
    connect(
        C["rescan_btn"].click,
        on_rescan,
        C,
        (),
        ("afa_ckpt", "cnn_ckpt", "status"),
        api_visibility="private",
        queue=False,
    )
