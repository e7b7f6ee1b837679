"""Plotly figures: class scores and training curves. Input is numbers already computed elsewhere."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSS_KEYS = ("loss", "loss_cls", "loss_seg", "loss_aff", "loss_reg")
_LAYOUT = dict(
    margin=dict(l=10, r=10, t=36, b=10),
    template="plotly_white",
    legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
)


def scores_figure(
    classes: list[str], series: dict[str, np.ndarray], present: Iterable[int] = ()
) -> go.Figure:
    """Grouped horizontal bars of per-class probabilities, one series per model.

    ``classes`` are all class names (background first); each series holds the C-1 foreground
    probabilities. Classes in ``present`` (the labels used) are marked with a dot."""
    names = list(classes[1:])
    present = {int(c) for c in present}
    shown = [f"● {n}" if i + 1 in present else n for i, n in enumerate(names)]
    fig = go.Figure()
    for label, values in series.items():
        values = np.asarray(values, dtype=float).reshape(-1)[: len(names)]
        fig.add_trace(
            go.Bar(
                x=values,
                y=shown,
                orientation="h",
                name=label,
                hovertemplate="%{y}: %{x:.3f}<extra>" + label + "</extra>",
            )
        )
    fig.add_vline(
        x=0.5, line_dash="dot", line_color="#888", annotation_text="0.5", annotation_position="bottom right"
    )
    fig.update_layout(
        **_LAYOUT,
        barmode="group",
        height=max(220, 34 * len(names) + 80),
        title=dict(text="Class scores (● = labels used)", font=dict(size=13)),
    )
    fig.update_xaxes(range=[0, 1], title_text="probability")
    fig.update_yaxes(autorange="reversed")
    return fig


def training_figure(records: list[dict]) -> go.Figure:
    """Loss terms (left) and evaluation mIoU per stage (right) against the iteration."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("losses", "mIoU (eval), pseudo-label accuracy (train)"),
        horizontal_spacing=0.1,
    )
    train = [r for r in records if r.get("kind", "train") == "train" and "step" in r]
    for key in LOSS_KEYS:
        points = [(r["step"], r[key]) for r in train if _is_number(r.get(key))]
        if points:
            steps, values = zip(*points)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=key, legendgroup="loss"), 1, 1)
    accuracy_keys = sorted({k for r in train for k in r if k.endswith("_acc") and _is_number(r.get(k))})
    evals = [r for r in records if r.get("kind") == "eval" and "step" in r]
    stages: dict[str, list[tuple[int, float]]] = {}
    for r in evals:
        miou = r.get("miou")
        if _is_number(miou):
            miou = {"miou": miou}
        for stage, value in (miou or {}).items():
            if _is_number(value):
                stages.setdefault(stage, []).append((r["step"], _percent(value)))
    for stage, points in stages.items():
        steps, values = zip(*points)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=f"mIoU {stage}"), 1, 2)
    for key in accuracy_keys:  # pseudo-label accuracy against ground truth, where the data has it
        points = [(r["step"], _percent(r[key])) for r in train if _is_number(r.get(key))]
        steps, values = zip(*points)
        fig.add_trace(
            go.Scatter(x=steps, y=values, mode="lines", name=key.replace("_", " "), line=dict(dash="dot")),
            1,
            2,
        )
    if not train and not evals:
        fig.add_annotation(text="no metrics yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    legend = dict(orientation="h", yanchor="top", y=-0.3, x=0, font=dict(size=11))
    fig.update_layout(**{**_LAYOUT, "legend": legend, "margin": dict(l=10, r=10, t=30, b=10)}, height=420)
    fig.update_xaxes(title_text="iteration")
    fig.update_yaxes(title_text="%", row=1, col=2)
    return fig


def _percent(value: float) -> float:
    return float(value) * 100.0 if float(value) <= 1.0 else float(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def per_class_iou_figure(classes: list[str], stages: dict[str, dict]) -> go.Figure:
    """Grouped bars: each class's IoU (%) for every stage. ``stages``: ``{stage: {class: IoU or
    None}}`` as ``ConfusionMatrix.as_dict`` gives its ``per_class``."""
    fig = go.Figure()
    for stage, per_class in stages.items():
        values = [per_class.get(name) for name in classes]
        fig.add_trace(
            go.Bar(
                x=list(classes),
                y=[None if v is None else 100.0 * v for v in values],
                name=stage,
                hovertemplate="%{x}: %{y:.1f}<extra>" + stage + "</extra>",
            )
        )
    fig.update_layout(
        **_LAYOUT,
        barmode="group",
        height=340,
        title=dict(text="Per-class IoU per stage (dataset)", font=dict(size=13)),
    )
    fig.update_yaxes(range=[0, 100], title_text="IoU %")
    return fig


def confusion_figure(classes: list[str], shares: np.ndarray, area: np.ndarray, stage: str) -> go.Figure:
    """Heat map of ``ConfusionMatrix.class_shares``: rows the true classes (each row's % of its
    pixels by predicted class), columns the predicted ones, a last column "none" only when some
    pixels got no class; each row's label carries its predicted / true area. Classes absent from
    the truth are left out."""
    rows = [i for i in range(len(classes)) if np.isfinite(shares[i]).all()]
    columns = list(classes) + (["none"] if np.nansum(shares[:, -1]) > 0 else [])
    z = 100.0 * shares[rows][:, : len(columns)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=[f"{classes[i]} (area x{area[i]:.2f})" for i in rows],
            zmin=0,
            zmax=100,
            colorscale="Blues",
            text=[[f"{v:.1f}" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}: %{z:.1f} %<extra></extra>",
            colorbar=dict(title=dict(text="% of row"), thickness=12),
        )
    )
    fig.update_layout(
        **_LAYOUT,
        height=120 + 36 * len(rows),
        title=dict(
            text=f"{stage}: where each true class's pixels went (%); area = predicted / true pixels",
            font=dict(size=13),
        ),
    )
    fig.update_xaxes(title_text="predicted", side="bottom")
    fig.update_yaxes(title_text="true", autorange="reversed")
    return fig
