"""The PAR steps tab: one class's score map after each Pixel-Adaptive Refinement iteration.

Its heat maps use the default overlay opacity (the opacity slider is the Inspect tab's): the
point here is how the map changes from step to step, on one colour scale for all steps."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from app import render
from app.analysis import cached
from app.errors import guarded
from app.state import Session
from app.wiring import QUICK, connect

VIEWS = ("par_class", "par_step", "par_image", "par_strip", "par_note")


def layout(C: dict) -> None:
    gr.Markdown("Pixel-Adaptive Refinement, one iteration at a time, for the chosen class.")
    with gr.Row():
        C["par_class"] = gr.Dropdown([], label="Class")
        C["par_step"] = gr.Slider(
            0, 10, value=0, step=1, label="PAR iteration (0 = before PAR)", elem_id="par-step"
        )
    with gr.Row():
        C["par_image"] = gr.Image(
            elem_id="par-image",
            label="Score map",
            interactive=False,
            format="jpeg",
            scale=1,
            min_width=320,
            elem_classes="afa-map",
        )
        C["par_strip"] = gr.Image(
            label="All iterations", show_label=False, interactive=False, format="jpeg", scale=2
        )
    C["par_note"] = gr.Markdown(elem_classes="afa-note")


def views(afa: Any, class_id: int | None, step: int | None) -> dict:
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
    channels = [int(c) for c in afa.par_channels]
    if class_id is None or int(class_id) not in channels:
        foreground = [c for c in channels if c != 0]
        class_id = foreground[0] if foreground else channels[0]
    class_id = int(class_id)
    last = afa.par_steps.shape[0] - 1
    step = int(min(max(int(step or 0), 0), last))
    maps = np.asarray(afa.par_steps[:, channels.index(class_id)], dtype=np.float32)
    lo, hi = float(maps.min()), float(maps.max())
    hi = hi if hi > lo else lo + 1e-6
    thumb = render.resize_long_side(afa.image, render.THUMB_SIDE)
    strip = render.tile_grid(
        [render.overlay_heatmap(thumb, m, vmin=lo, vmax=hi) for m in maps],
        [f"step {t}" if t else "before PAR" for t in range(last + 1)],
        columns=min(6, last + 1),
    )
    change = float(np.abs(maps[step] - maps[0]).mean())
    note = (
        f"**{render.class_name(afa.classes, class_id)}**, "
        f"{'before PAR' if step == 0 else f'after {step} of {last} PAR iterations'}"
        f"; mean change from the start {change:.4f}. Colour scale {lo:.3f}–{hi:.3f} (same for all steps). "
        + render.colourbar_html(lo, hi)
    )
    return {
        "par_class": gr.update(
            choices=[(render.class_name(afa.classes, c), c) for c in channels], value=class_id
        ),
        "par_step": gr.update(minimum=0, maximum=last, value=step),
        "par_image": render.overlay_heatmap(render.for_display(afa.image), maps[step], vmin=lo, vmax=hi),
        "par_strip": strip,
        "par_note": note,
    }


@guarded
def on_par_class(class_id, step, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    result = views(cached(session, "afa"), class_id, step)
    result.pop("par_class", None)
    return result


@guarded
def on_par_step(class_id, step, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    result = views(cached(session, "afa"), class_id, step)
    return {k: result[k] for k in ("par_image", "par_note")}


def wire(C: dict) -> None:
    inputs, names = ("par_class", "par_step", "session"), ("status",) + VIEWS
    connect(C["par_class"].input, on_par_class, C, inputs, names, api_visibility="private", **QUICK)
    connect(
        C["par_step"].change,
        on_par_step,
        C,
        inputs,
        names,
        api_name="par_step",
        trigger_mode="always_last",
        **QUICK,
    )
