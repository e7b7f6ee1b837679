"""The Affinity tab: the clicked pixel's row of the learned affinity (AFA) and of the raw
attention baseline (MHSA). A click also refreshes the Attention heads tab, which shows the same
pixel; neither runs the model."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from app import heads_view, render
from app.analysis import cached
from app.errors import guarded
from app.state import Session, ViewSettings
from app.wiring import QUICK, bind, connect, outputs
from core.errors import UserError

VIEWS = ("aff_click", "aff_learned", "aff_mhsa", "aff_note")
CLICK_VIEWS = ("session", "status", "click_x", "click_y") + VIEWS + heads_view.VIEWS


def layout(C: dict) -> None:
    gr.Markdown(
        "Click a pixel of the left image: its row of the **learned affinity** (AFA) and of "
        "the **raw attention** baseline (MHSA), with the clicked point marked."
    )
    with gr.Row(equal_height=True):
        for view, label, elem_id in (
            ("aff_click", "Click a pixel", "affinity-click"),
            ("aff_learned", "Learned affinity (AFA)", "affinity-learned"),
            ("aff_mhsa", "MHSA attention", "affinity-mhsa"),
        ):
            C[view] = gr.Image(
                label=label,
                interactive=False,
                format="jpeg",
                elem_id=elem_id,
                min_width=320,
                elem_classes="afa-map",
            )
    C["aff_note"] = gr.Markdown(elem_classes="afa-note", elem_id="affinity-note")
    with gr.Row():
        C["smooth"] = gr.Checkbox(False, label="Smooth token maps (bilinear; off = one square per token)")
        C["click_x"] = gr.Number(label="x", precision=0, minimum=0, scale=0, min_width=90)
        C["click_y"] = gr.Number(label="y", precision=0, minimum=0, scale=0, min_width=90)
        C["goto_btn"] = gr.Button("Show pixel", size="sm", scale=0)


def views(session: Session, afa: Any, settings: ViewSettings) -> dict:
    """The clicked pixel's row of the learned affinity and of the MHSA baseline."""
    if afa is None:
        return {"aff_click": None, "aff_learned": None, "aff_mhsa": None, "aff_note": ""}
    image, point = afa.image, session.point_or_centre()
    # drawn at display size: markers and boxes in display pixels, clicks mapped back (on_select)
    factor = render.display_scale(image.shape)
    shown, marked = render.enlarge(image, factor), render.to_display(point, factor)
    clicked = render.draw_marker(shown, marked)
    if afa.affinity is None or afa.grid is None:
        blank = render.placeholder("this model has no attention, so no affinity", shown.shape[:2])
        return {
            "aff_click": clicked,
            "aff_learned": blank,
            "aff_mhsa": blank,
            "aff_note": "The selected checkpoint has no attention (CNN or affinity head off).",
        }
    grid = tuple(int(v) for v in afa.grid)
    row, col = render.token_at(point, image.shape, grid)
    index = row * grid[1] + col
    learned = np.asarray(afa.affinity[index], dtype=np.float32).reshape(grid)
    mode = "bilinear" if settings.smooth else "nearest"
    opacity = settings.opacity
    box = tuple(v * factor for v in render.token_box((row, col), image.shape, grid))
    result = {
        "aff_click": render.draw_token_box(clicked, box),
        "aff_learned": render.draw_marker(
            render.overlay_heatmap(shown, learned, opacity, 0.0, 1.0, mode=mode), marked
        ),
    }
    mhsa_note = ""
    if afa.mhsa is not None:
        mhsa = np.asarray(afa.mhsa[index], dtype=np.float32).reshape(grid)
        lo, hi = float(mhsa.min()), float(mhsa.max())
        # attention rows sum to 1, so their values are tiny: stretch each row over the colour scale
        result["aff_mhsa"] = render.draw_marker(
            render.overlay_heatmap(shown, mhsa, opacity, lo, max(hi, lo + 1e-12), mode=mode), marked
        )
        mhsa_note = f"MHSA attention {lo:.2g}–{hi:.2g} (stretched to the colour scale). "
    else:
        result["aff_mhsa"] = render.placeholder("no MHSA map for this model", shown.shape[:2])
    result["aff_note"] = (
        f"Pixel ({point[0]}, {point[1]}) → token (row {row}, col {col}) of the {grid[0]}×{grid[1]} grid. "
        f"Learned affinity {learned.min():.3f}–{learned.max():.3f} (colour scale 0–1). {mhsa_note}"
        + render.colourbar_html(0.0, 1.0, label="affinity")
    )
    return result


def _pixel_views(session: Session, settings: ViewSettings) -> dict:
    """The views that depend on the clicked pixel: this tab's and the heads' (block unchanged)."""
    afa = cached(session, "afa")
    result = {"session": session}
    result.update(views(session, afa, settings))
    result.update(heads_view.views(session, afa, settings))
    result.pop("heads_block", None)
    return result


@guarded
def on_click(
    session: Session | None, point: tuple[int, int] | list[int] | None, block, opacity: float, smooth: bool
) -> dict:
    """A pixel was clicked: its affinity, MHSA and per-head attention rows. No model call."""
    if session is None or not session.ready:
        raise UserError("Analyse an image first, then click on it.")
    if point is None or len(point) < 2:
        return {}
    height, width = session.image.shape[:2]
    point = (min(max(int(point[0]), 0), width - 1), min(max(int(point[1]), 0), height - 1))
    result = _pixel_views(
        session.evolve(point=point), ViewSettings(block=block, opacity=opacity, smooth=smooth)
    )
    result["click_x"], result["click_y"] = point
    return result


@guarded
def on_smooth(smooth: bool, block, opacity: float, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    return _pixel_views(session, ViewSettings(block=block, opacity=opacity, smooth=smooth))


def on_select(session, block, opacity, smooth, evt: gr.SelectData) -> dict:
    """A click on an image: Gradio gives the pixel of the picture as ``evt.index = [x, y]``; the
    picture is the image enlarged by ``render.display_scale``."""
    point = evt.index if isinstance(evt.index, (list, tuple)) else None
    if point is not None and session is not None and session.image is not None:
        point = render.from_display(point, render.display_scale(session.image.shape))
    return on_click(session, point, block, opacity, smooth)


def on_goto(x, y, session, block, opacity, smooth) -> dict:
    """The pixel typed in the x / y boxes."""
    return on_click(session, None if x is None or y is None else (x, y), block, opacity, smooth)


def wire(C: dict) -> None:
    pixel = ("session", "heads_block", "opacity", "smooth")  # what drawing a clicked pixel needs
    names, outs = outputs(C, CLICK_VIEWS)
    for image in ("aff_click", "heads_click"):
        C[image].select(
            bind(on_select, names), [C[n] for n in pixel], outs, api_visibility="private", **QUICK
        )
    goto, smooth = ("click_x", "click_y") + pixel, ("smooth", "heads_block", "opacity", "session")
    connect(C["goto_btn"].click, on_goto, C, goto, CLICK_VIEWS, api_name="click_pixel", **QUICK)
    redrawn = ("status",) + VIEWS + heads_view.VIEWS
    connect(C["smooth"].input, on_smooth, C, smooth, redrawn, api_visibility="private", **QUICK)
