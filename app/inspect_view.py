"""The Inspect tab: the image, the checkpoint pickers and the image-level labels (what is
analysed), the CAMs of both models, the ground truth and the label maps with their scores, the
segmentation, the class scores and the export.

A new image, checkpoint, label set, CRF or pseudo-label choice analyses again (``app.analysis``)
and redraws every analysis tab (``all_views``); the class picker, the opacity slider and the
errors toggle only redraw.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import numpy as np

from app import affinity_view, compare_view, export, heads_view, maps, par_view, plots, render
from app.analysis import analyse_session, cached, new_session
from app.backend import BACKEND
from app.checkpoints import CHECKPOINTS, describe_domain
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
    "score_cam",
    "score_par",
    "score_mhsa",
    "score_afa",
    "truth_map",
    "truth_note",
    "seg",
    "seg_note",
    "scores",
    "legend",
    "crf",
    "true_btn",
    "export_file",
)
# an analysis redraws every analysis tab
ALL_VIEWS = (
    ("session",) + VIEWS + affinity_view.VIEWS + heads_view.VIEWS + par_view.VIEWS + compare_view.VIEWS
)
# maps.PANELS panel -> (picture view, score view)
PANEL_VIEWS = {
    "cam": ("label_cam", "score_cam"),
    "par": ("label_par", "score_par"),
    "mhsa": ("label_mhsa", "score_mhsa"),
    "afa": ("label_afa", "score_afa"),
    "seg": ("seg", "seg_note"),
}
# no class above this probability: the status says the image may be unlike the training data
CONFIDENT = 0.5
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
    # png: an image the app puts here (one opened from the Dataset tab) comes back bit-exact
    image = gr.Image(type="filepath", image_mode=None, format="png", **kwargs)
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
                    label="Examples (with ground truth)",
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
                [],
                label="Image-level labels",
                info="The true ones when the image has ground truth, else the predicted ones; "
                "tick or untick, then Apply.",
            )
            with gr.Row():
                C["apply_btn"] = gr.Button("Apply labels", size="sm", variant="primary", min_width=80)
                C["true_btn"] = gr.Button("Use true", size="sm", interactive=False, min_width=80)
                C["predicted_btn"] = gr.Button("Use predicted", size="sm", min_width=80)
            C["crf"] = gr.Checkbox(
                False,
                label="Dense CRF on the segmentation",
                interactive=crf_ok,
                info=None if crf_ok else "pydensecrf is not installed on this server",
            )
            C["train_labels"] = gr.Checkbox(
                False,
                label="Training pseudo labels (with the ignore band)",
                info="Off: one background score, every pixel labelled (as python -m core.evaluate scores).",
            )
            C["errors"] = gr.Checkbox(
                False, label="Show errors against the ground truth", elem_id="errors-toggle"
            )
            C["opacity"] = gr.Slider(
                0.0, 1.0, value=render.DEFAULT_OPACITY, step=0.05, label="Overlay opacity"
            )
            C["rescan_btn"] = gr.Button("Rescan checkpoints", size="sm")
            C["export_btn"] = gr.Button("Export analysis (zip)", size="sm", elem_id="export-btn")
            C["export_file"] = gr.File(
                label="Export", interactive=False, visible=False, elem_id="export-file"
            )
        with gr.Column(scale=3, min_width=320):
            C["status"] = gr.Markdown("Upload an image or pick an example.", elem_id="status")
            with gr.Row():
                C["cam_class"] = gr.Dropdown([], label="Class for the CAMs", scale=1, min_width=200)
                C["legend"] = gr.HTML(elem_classes="afa-legend", elem_id="legend")
            with gr.Row(equal_height=True):
                for view, label, elem_id in (
                    ("cam_cnn", "CNN CAM", "cam-cnn"),
                    ("cam_afa", "Transformer CAM", "cam-afa"),
                ):
                    C[view] = gr.Image(
                        elem_id=elem_id,
                        label=label,
                        interactive=False,
                        format="jpeg",
                        min_width=320,
                        elem_classes="afa-map",
                    )
            C["cam_note"] = gr.Markdown(elem_classes="afa-note")
            with gr.Row():
                with gr.Column(min_width=320):
                    C["truth_map"] = gr.Image(
                        elem_id="truth-map",
                        label="Ground truth",
                        interactive=False,
                        format="png",
                        elem_classes="afa-map",
                    )
                    C["truth_note"] = gr.Markdown(elem_classes="afa-note", elem_id="truth-note")
                for panel, (view, note) in PANEL_VIEWS.items():
                    with gr.Column(min_width=320):
                        C[view] = gr.Image(
                            elem_id=view.replace("_", "-"),
                            label=maps.PANELS[panel][1],
                            interactive=False,
                            format="png",
                            elem_classes="afa-map",
                        )
                        C[note] = gr.Markdown(elem_classes="afa-note", elem_id=note.replace("_", "-"))
            C["scores"] = gr.Plot(label="Class scores", elem_id="scores")


# --------------------------------------------------------------------------------------------
# views


def default_class(analysis: Any) -> int | None:
    if analysis is None:
        return None
    if len(analysis.present):
        return int(analysis.present[0])
    return int(np.argmax(analysis.scores)) + 1 if len(analysis.scores) else None


def label_source(session: Session, afa: Any) -> str:
    """Where the image-level labels came from, as the status line says it."""
    if afa.labels_source != "given":
        return "predicted labels"
    if session.label_mode == "true" and session.truth is not None:
        return "true labels"
    return "your labels"


def status_line(session: Session, afa: Any, cnn: Any, extra: str = "") -> str:
    if afa is None:
        return "Upload an image or pick an example."
    parts = []
    afa_info = CHECKPOINTS.resolve(session.afa_id)
    names = [afa.classes[int(c)] for c in afa.present]
    parts.append(
        f"**{afa_info.label if afa_info else 'model'}** ({describe_domain(afa_info)}) · "
        f"{afa.image.shape[1]}×{afa.image.shape[0]} px · "
        f"{label_source(session, afa)}: {', '.join(names) if names else 'none'}"
    )
    if len(afa.scores) and float(np.max(afa.scores)) <= CONFIDENT:
        best = int(np.argmax(afa.scores))
        parts.append(
            f"⚠️ No class scores above {CONFIDENT:g} on this image (best: {afa.classes[best + 1]} "
            f"{float(afa.scores[best]):.2f}): it may be unlike the images this model was trained on, "
            "so the maps show its best guess"
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
    """One model's CAM of a class over ``image`` (at display size; the CAM is resized smoothly)."""
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
    shown = render.for_display(afa.image)
    return {
        "cam_class": gr.update(choices=choices, value=class_id),
        "cam_cnn": _cam_view(shown, cnn, name, opacity, "CNN"),
        "cam_afa": _cam_view(shown, afa, name, opacity, "Transformer"),
        "cam_note": note,
    }


def views(afa: Any, cnn: Any, settings: ViewSettings, session: Session) -> dict:
    """CAM comparison, the ground truth, the label maps with their scores (or errors), the
    segmentation, class scores and legend."""
    if afa is None:
        blank = dict.fromkeys(("cam_cnn", "cam_afa", "truth_map") + tuple(v for v, _ in PANEL_VIEWS.values()))
        return {
            **blank,
            **dict.fromkeys(("cam_note", "truth_note") + tuple(n for _, n in PANEL_VIEWS.values()), ""),
            "scores": None,
            "legend": "",
            "cam_class": gr.update(choices=[], value=None),
            "labels": gr.update(choices=[], value=[]),
            "true_btn": gr.update(interactive=False),
            "export_file": gr.update(value=None, visible=False),
        }
    classes, opacity = list(afa.classes), settings.opacity
    present = [int(c) for c in afa.present]
    result = cam_views(afa, cnn, settings.class_id, opacity)
    result["labels"] = gr.update(choices=classes[1:], value=[classes[c] for c in present])
    result["true_btn"] = gr.update(interactive=session.truth is not None)
    result["export_file"] = gr.update(value=None, visible=False)  # an export is of what was shown
    result["truth_map"], result["truth_note"] = maps.truth_panel(afa, session.truth, opacity)
    panels, shown_ids = maps.label_panels(afa, session.truth, opacity, session.show_errors, session.crf)
    for panel, (view, note) in PANEL_VIEWS.items():
        result[view], result[note] = panels[panel]
    series = {"Transformer": afa.scores}
    if cnn is not None and list(cnn.classes) == classes:
        series["CNN"] = cnn.scores
    result["scores"] = plots.scores_figure(classes, series, present)
    shown_ids |= maps.truth_ids(afa, session.truth)
    result["legend"] = maps.legend(afa, shown_ids, session.show_errors, session.truth)
    return result


def all_views(session: Session, settings: ViewSettings, extra_status: str = "") -> dict:
    """Every analysis tab, drawn from the session's cached analyses."""
    afa, cnn = cached(session, "afa"), cached(session, "cnn")
    result = {"session": session, "status": status_line(session, afa, cnn, extra_status)}
    result.update(views(afa, cnn, settings, session))
    result.update(affinity_view.views(session, afa, settings))
    result.update(heads_view.views(session, afa, settings))
    result.update(par_view.views(afa, None, 0))
    result.update(compare_view.views(session, settings))
    return result


# --------------------------------------------------------------------------------------------
# handlers


def analyse_and_draw(session: Session, settings: ViewSettings, progress, extra: str = "") -> dict:
    """Analyse the session's image (or fetch the analyses) and draw every analysis tab."""
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
    """A new image (upload, example, paste): read it with core.io, analyse, draw every view.
    The image the Dataset tab has just opened here (with its ground truth) comes back through
    this event, and is left as it is: named and scored as the Dataset tab opened it, even when
    its pixels are also those of a shipped example."""
    settings = ViewSettings(opacity=opacity, smooth=smooth)
    old = session or Session()
    keep = dict(dense=old.dense, show_errors=old.show_errors)
    if source is None:
        return all_views(Session(afa_id=afa_id, cnn_id=cnn_id, crf=bool(crf), **keep), settings)
    if not afa_id:
        raise UserError(
            "No Transformer checkpoint is available: put one in checkpoints/ or train one in the Train tab."
        )
    progress(0.05, desc="reading the image")
    fresh = new_session(source, afa_id, cnn_id, crf, **keep)
    if (
        old.ready
        and old.image_hash == fresh.image_hash
        and old.truth is not None
        and (old.afa_id, old.cnn_id) == (afa_id, cnn_id or None)
    ):
        return {}  # shown with a ground truth it does not carry itself (opened from the Dataset tab)
    return analyse_and_draw(fresh, settings, progress)


@guarded
def on_model_change(
    afa_id, cnn_id, class_id, opacity, smooth, session: Session | None, progress=PROGRESS
) -> dict:
    """Another checkpoint picked: re-analyse the current image with it (cached per checkpoint)."""
    old = session or Session()
    session = old.evolve(afa_id=afa_id or None, cnn_id=cnn_id or None)
    if session.image is None:
        return {"session": session}
    if old.ready and (old.afa_id, old.cnn_id) == (session.afa_id, session.cnn_id):
        return {}  # the pickers were set to what is shown (e.g. by the Dataset tab)
    if not afa_id:
        raise UserError("Pick a Transformer checkpoint.")
    return analyse_and_draw(session, ViewSettings(class_id, opacity, smooth=smooth), progress)


@guarded
def on_labels_override(labels, class_id, opacity, smooth, session: Session | None, progress=PROGRESS) -> dict:
    """Analyse again with the user's image-level labels (``None`` = the predicted labels)."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first.")
    if labels is not None:
        if not labels:  # core would fall back to the predicted classes: say so instead of guessing
            raise UserError("No label is ticked: tick the classes in the image and Apply, or use the "
                            "predicted labels.")
        classes = cached(session, "afa").classes[1:]
        unknown = [n for n in labels if n not in classes]
        if unknown:
            raise UserError(f"Unknown class name(s): {', '.join(unknown)}.")
        labels = tuple(n for n in classes if n in labels)  # keep the model's order
    mode = "predicted" if labels is None else "custom"
    return analyse_and_draw(
        session.evolve(labels=labels, label_mode=mode),
        ViewSettings(class_id, opacity, smooth=smooth),
        progress,
    )


@guarded
def on_true_labels(class_id, opacity, smooth, session: Session | None, progress=PROGRESS) -> dict:
    """Analyse again with the ground truth's image-level labels."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first.")
    if session.truth is None:
        raise UserError("This image has no ground truth: its true labels are unknown.")
    return analyse_and_draw(
        session.evolve(label_mode="true"), ViewSettings(class_id, opacity, smooth=smooth), progress
    )


@guarded
def on_train_labels(
    train_labels: bool, class_id, opacity, smooth, session: Session | None, progress=PROGRESS
) -> dict:
    """Pseudo labels as training makes them (two background thresholds, an ignore band) or as
    evaluation scores them (one background score): analysed separately, both cached."""
    session = (session or Session()).evolve(dense=not train_labels)
    if not session.ready:
        return {"session": session}
    return analyse_and_draw(session, ViewSettings(class_id, opacity, smooth=smooth), progress)


@guarded
def on_errors(show: bool, class_id, opacity: float, smooth: bool, session: Session | None) -> dict:
    """Paint the label maps' errors against the ground truth (or their classes): no model call."""
    session = (session or Session()).evolve(show_errors=bool(show))
    if not session.ready:
        return {"session": session}
    result = views(
        cached(session, "afa"),
        cached(session, "cnn"),
        ViewSettings(class_id, opacity, smooth=smooth),
        session,
    )
    keep = {"legend"} | {v for pair in PANEL_VIEWS.values() for v in pair}
    out = {k: v for k, v in result.items() if k in keep}
    if show and session.truth is None:
        out["status"] = "This image has no ground truth, so there are no errors to show."
    return {"session": session, **out}


@guarded
def on_export(opacity: float, session: Session | None) -> dict:
    """A zip of the current analysis (maps, overlays, arrays, scores): ``app.export``."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first, then export it.")
    return {"export_file": gr.update(value=str(export.write_zip(session, opacity)), visible=True)}


@guarded
def on_crf_toggle(
    crf: bool, class_id, opacity: float, smooth: bool, session: Session | None, progress=PROGRESS
) -> dict:
    """CRF on: the analysis with ``crf=True`` (cached separately); off: the plain segmentation."""
    session = (session or Session()).evolve(crf=bool(crf))
    if not session.ready:
        return {"session": session}
    result = analyse_and_draw(session, ViewSettings(class_id, opacity, smooth=smooth), progress)
    return {
        k: v
        for k, v in result.items()
        if k in ("session", "status", "seg", "seg_note", "crf", "legend", "export_file")
    }


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
    result = views(afa, cached(session, "cnn"), settings, session)
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
        **compare_view.refresh_choices(),
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
    connect(C["true_btn"].click, on_true_labels, C, draw, ALL_VIEWS, api_visibility="private", **ANALYSIS)
    connect(C["crf"].input, on_crf_toggle, C, ("crf",) + draw, ALL_VIEWS, api_name="set_crf", **ANALYSIS)
    connect(
        C["train_labels"].input,
        on_train_labels,
        C,
        ("train_labels",) + draw,
        ALL_VIEWS,
        api_visibility="private",
        **ANALYSIS,
    )
    connect(
        C["errors"].input,
        on_errors,
        C,
        ("errors",) + draw,
        ("session", "status", "legend") + tuple(v for pair in PANEL_VIEWS.values() for v in pair),
        api_name="set_errors",
        **QUICK,
    )
    connect(
        C["export_btn"].click,
        on_export,
        C,
        ("opacity", "session"),
        ("export_file", "status"),
        api_name="export",
        **QUICK,
    )
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
        ("afa_ckpt", "cnn_ckpt", "cmp_a", "cmp_b", "status"),
        api_visibility="private",
        queue=False,
    )
