"""The Compare tab: the Inspect tab's image analysed by two checkpoints (e.g. two ablation
variants, two training runs), stage by stage, side by side, with each stage's score on this image
when it has ground truth. Each checkpoint is asked for the labels it knows (the true ones when
there is ground truth)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from app import maps
from app import truth as gt
from app.analysis import analyse_pair, cached
from app.checkpoints import CHECKPOINTS, describe_domain
from app.errors import guarded
from app.state import Session, ViewSettings
from app.wiring import ANALYSIS, PROGRESS, connect

SIDES = ("a", "b")
PANEL_VIEWS = {
    side: {panel: (f"cmp_{side}_{panel}", f"cmp_{side}_{panel}_note") for panel in maps.PANELS}
    for side in SIDES
}
VIEWS = ("cmp_note", "cmp_truth", "cmp_truth_note") + tuple(
    v for side in SIDES for pair in PANEL_VIEWS[side].values() for v in pair
)
HINT = "Pick two checkpoints and press **Compare**: both analyse the image of the *Inspect* tab."


def choices() -> list[tuple[str, str]]:
    """Every checkpoint that can be analysed: Transformers first, then CNNs."""
    return CHECKPOINTS.choices("afa") + CHECKPOINTS.choices("cnn_cam")


def layout(C: dict) -> None:
    options = choices()
    first = options[0][1] if options else None
    second = options[1][1] if len(options) > 1 else first
    gr.Markdown(
        "Analyse the *Inspect* tab's image with two checkpoints (for example two ablation variants "
        "or two training runs) and compare every stage, with its score when the image has ground truth."
    )
    with gr.Row():
        C["cmp_a"] = gr.Dropdown(options, value=first, label="Checkpoint A", min_width=240, elem_id="cmp-a")
        C["cmp_b"] = gr.Dropdown(options, value=second, label="Checkpoint B", min_width=240, elem_id="cmp-b")
        C["cmp_btn"] = gr.Button("Compare", variant="primary", scale=0, min_width=120, elem_id="compare-btn")
    C["cmp_note"] = gr.Markdown(HINT, elem_id="compare-note")
    with gr.Row():
        with gr.Column(min_width=320):
            C["cmp_truth"] = gr.Image(
                label="Ground truth",
                interactive=False,
                format="png",
                elem_classes="afa-map",
                elem_id="compare-truth",
            )
            C["cmp_truth_note"] = gr.Markdown(elem_classes="afa-note")
    for panel, (_, title) in maps.PANELS.items():
        with gr.Row():
            for side in SIDES:
                view, note = PANEL_VIEWS[side][panel]
                with gr.Column(min_width=320):
                    C[view] = gr.Image(
                        label=f"{side.upper()}: {title}",
                        interactive=False,
                        format="png",
                        elem_classes="afa-map",
                        elem_id=view.replace("_", "-"),
                    )
                    C[note] = gr.Markdown(elem_classes="afa-note")


def score_table(session: Session, first: Any, second: Any) -> str:
    """A Markdown table: per stage, both checkpoints' mIoU on this image and the difference."""
    scores = [gt.stage_scores(a, session.truth) for a in (first, second)]
    if not any(scores):
        return ""
    rows = ["| stage | A mIoU | B mIoU | B − A |", "| --- | ---: | ---: | ---: |"]
    for stage, title in gt.STAGE_TITLES.items():
        values = [s[stage].miou() if stage in s else np.nan for s in scores]
        if all(np.isnan(v) for v in values):
            continue
        cells = ["–" if np.isnan(v) else f"{100 * v:.1f}" for v in values]
        diff = values[1] - values[0]
        rows.append(
            f"| {title} | {cells[0]} | {cells[1]} | {'–' if np.isnan(diff) else f'{100 * diff:+.1f}'} |"
        )
    return "\n".join(rows)


def views(session: Session, settings: ViewSettings) -> dict:
    """Both checkpoints' label maps (from the cached analyses), the ground truth and the scores."""
    first, second = cached(session, "cmp_a"), cached(session, "cmp_b")
    blank = dict.fromkeys(VIEWS)
    if first is None or second is None or session.compare is None:
        return {**blank, **{v: "" for v in VIEWS if v.endswith("note")}, "cmp_note": HINT}
    result = dict(blank)
    result["cmp_truth"], result["cmp_truth_note"] = maps.truth_panel(first, session.truth, settings.opacity)
    header = []
    for side, analysis, checkpoint_id in zip(SIDES, (first, second), session.compare):
        info = CHECKPOINTS.resolve(checkpoint_id)
        names = ", ".join(analysis.classes[int(c)] for c in analysis.present) or "none"
        header.append(f"**{side.upper()}**: {info.label} ({describe_domain(info)}); labels: {names}")
        panels, _ = maps.label_panels(
            analysis, session.truth, settings.opacity, session.show_errors, session.crf
        )
        for panel, (view, note) in PANEL_VIEWS[side].items():
            result[view], result[note] = panels[panel]
    table = score_table(session, first, second)
    result["cmp_note"] = "  \n".join(header) + ("\n\n" + table if table else "")
    return result


@guarded(status="cmp_note")
def on_compare(
    first: str | None, second: str | None, opacity: float, session: Session | None, progress=PROGRESS
) -> dict:
    """Analyse the Inspect tab's image with both checkpoints (cached) and draw them side by side."""
    from core.errors import UserError

    if session is None or session.image is None:
        raise UserError("Analyse an image in the Inspect tab first.")
    if not first or not second:
        raise UserError("Pick two checkpoints.")
    session = analyse_pair(session, first, second, progress)
    return {"session": session, **views(session, ViewSettings(opacity=opacity))}


def wire(C: dict) -> None:
    connect(
        C["cmp_btn"].click,
        on_compare,
        C,
        ("cmp_a", "cmp_b", "opacity", "session"),
        ("session",) + VIEWS,
        api_name="compare",
        **ANALYSIS,
    )


def refresh_choices() -> dict:
    """New checkpoint lists for both pickers (after a rescan)."""
    options = choices()
    return {"cmp_a": gr.update(choices=options), "cmp_b": gr.update(choices=options)}
