"""The Attention heads tab: every head's softmax attention from the clicked pixel's token, for
one block of any stage. Clicks are handled with the Affinity tab's (``affinity_view.on_click``)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from app import render
from app.analysis import cached
from app.errors import guarded
from app.state import Session, ViewSettings
from app.wiring import QUICK, connect

VIEWS = ("heads_click", "heads_block", "heads_grid", "heads_note")


def layout(C: dict) -> None:
    gr.Markdown("Pick a block (any stage) and click a pixel: every head's attention from that pixel.")
    C["heads_block"] = gr.Dropdown([], label="Block")
    with gr.Row():
        C["heads_click"] = gr.Image(
            label="Click a pixel",
            interactive=False,
            format="jpeg",
            scale=1,
            elem_id="heads-click",
            min_width=320,
            elem_classes="afa-map",
        )
        C["heads_grid"] = gr.Image(
            label="Heads", show_label=False, interactive=False, format="jpeg", scale=2, elem_id="heads-grid"
        )
    C["heads_note"] = gr.Markdown(elem_classes="afa-note")


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


def views(session: Session, afa: Any, settings: ViewSettings) -> dict:
    """Every head's attention from the clicked pixel's token, for block ``settings.block``
    (default: the last one)."""
    if afa is None:
        return {
            "heads_click": None,
            "heads_grid": None,
            "heads_note": "",
            "heads_block": gr.update(choices=[], value=None),
        }
    image, point = afa.image, session.point_or_centre()
    factor = render.display_scale(image.shape)  # as the Affinity tab: clicks map back the same way
    clicked = render.draw_marker(render.enlarge(image, factor), render.to_display(point, factor))
    if not afa.attention:
        return {
            "heads_click": clicked,
            "heads_block": gr.update(choices=[], value=None),
            "heads_grid": render.placeholder("this model has no attention heads", clicked.shape[:2]),
            "heads_note": "The selected checkpoint has no attention blocks (CNN).",
        }
    block = settings.block
    if block is None or not 0 <= int(block) < len(afa.attention):
        block = len(afa.attention) - 1
    block = int(block)
    attention = afa.attention[block]
    grid, kv_grid = tuple(attention.grid), tuple(attention.kv_grid)
    row, col = render.token_at(point, image.shape, grid)
    maps = np.asarray(attention.attn[:, row * grid[1] + col, :], dtype=np.float32).reshape(-1, *kv_grid)
    thumb = render.resize_long_side(image, render.THUMB_SIDE)
    scale = thumb.shape[1] / image.shape[1]
    thumb_point = (int(point[0] * scale), int(point[1] * scale))
    mode = "bilinear" if settings.smooth else "nearest"
    tiles, titles = [], []
    for head, values in enumerate(maps):
        low, top = float(values.min()), float(values.max())
        # small tiles: each head stretched over the colour scale, at the default opacity
        heat = render.overlay_heatmap(
            thumb, values, render.DEFAULT_OPACITY, low, max(top, low + 1e-12), mode=mode
        )
        tiles.append(render.draw_marker(heat, thumb_point))
        titles.append(f"head {head + 1}  max {top:.3f}")
    note = (
        f"Stage {attention.stage + 1}, block {attention.index + 1}: softmax attention of query token "
        f"(row {row}, col {col}) of {grid[0]}×{grid[1]} over {kv_grid[0]}×{kv_grid[1]} keys"
        + (" (spatial reduction)" if kv_grid != grid else "")
        + ". Each head is stretched from its own minimum to its maximum."
    )
    return {
        "heads_click": render.draw_token_box(
            clicked, tuple(v * factor for v in render.token_box((row, col), image.shape, grid))
        ),
        "heads_block": gr.update(choices=block_choices(afa), value=block),
        "heads_grid": render.tile_grid(tiles, titles, min(len(tiles), 4)),
        "heads_note": note,
    }


@guarded
def on_block_change(block, smooth: bool, session: Session | None) -> dict:
    if session is None or not session.ready:
        return {}
    result = views(session, cached(session, "afa"), ViewSettings(block=block, smooth=smooth))
    result.pop("heads_block", None)
    return result


def wire(C: dict) -> None:
    connect(
        C["heads_block"].input,
        on_block_change,
        C,
        ("heads_block", "smooth", "session"),
        ("status",) + VIEWS,
        api_name="set_block",
        **QUICK,
    )
