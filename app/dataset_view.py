"""The Dataset tab: evaluate a checkpoint on a dataset the server offers, every image once
(``app.evaluations``: progress bar, results cached on disk), then look across it: a sortable,
filterable table of each image's stage mIoUs and the gains rw_afa - rw_mhsa, rw_afa - par and
seg - par; the dataset totals and per-class IoU per stage; the best and worst image of each gain
one click away; which class takes which, per stage (a heat map of the class confusion); a click
on a row opens that image in Inspect with its ground truth.

Everything but *Evaluate* reads the cached results: sorting, filtering, the CSV and the chart
never run the model (opening an image in Inspect analyses that one image, like an example).
"""

# No ``from __future__ import annotations``: Gradio reads the ``gr.SelectData`` annotation.

import functools
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from app import inspect_view, plots
from app import truth as gt
from app.analysis import new_session
from app.backend import BACKEND
from app.checkpoints import CHECKPOINTS, describe_domain
from app.errors import guarded
from app.evaluations import (
    EVALUATIONS,
    GAINS,
    STAGE_COLUMNS,
    compatible,
    dataset_classes,
    extremes,
    known_datasets,
    resolve_dataset,
    table_columns,
    table_rows,
    write_csv,
)
from app.state import Session, ViewSettings
from app.wiring import ANALYSIS, PROGRESS, QUICK, bind, connect, outputs
from core.errors import UserError

EVALUATION = dict(concurrency_id="evaluation", concurrency_limit=1)  # beside, not before, the analyses
MAX_ROWS = 1000  # rows sent to the browser (the CSV has them all)
ANY_CLASS = "(any class)"
EXTREME_BUTTONS = tuple((f"ds_best_{i}", f"ds_worst_{i}") for i in range(len(GAINS)))
TABLE_VIEWS = ("ds_table", "ds_table_note")
VIEWS = (
    ("ds_state", "ds_status", "ds_totals", "ds_chart", "ds_class", "ds_conf_stage", "ds_confusion")
    + TABLE_VIEWS
    + tuple(b for pair in EXTREME_BUTTONS for b in pair)
)
FILTERS = ("ds_sort", "ds_desc", "ds_class", "ds_name")
# opening an image in Inspect: every analysis view, the input image, the pickers and the tab
OPEN_VIEWS = inspect_view.ALL_VIEWS + ("image", "afa_ckpt", "cnn_ckpt", "crf", "train_labels", "tabs")
PUBLIC = {"mode": False}  # set by layout: public mode offers only the bundled subsets


def _checkpoint_choices(dataset_id: str | None) -> tuple[list[tuple[str, str]], str]:
    """The checkpoints that know the dataset's classes, and a sentence when there are none."""
    if not dataset_id:
        return [], "No dataset is offered by this server."
    info = resolve_dataset(dataset_id, PUBLIC["mode"])
    classes = dataset_classes(info)
    fits = compatible(CHECKPOINTS.all(), classes)
    if not fits:
        return [], (
            f"No checkpoint knows this dataset's classes ({', '.join(classes[1:])}); the checkpoints "
            "here know other ones. Train one on it, or pick another dataset."
        )
    return [(c.label, c.id) for c in fits], ""


def layout(C: dict, public: bool) -> None:
    PUBLIC["mode"] = bool(public)
    datasets = known_datasets(public)
    default = datasets[0].id if datasets else None
    try:
        ckpts, why = _checkpoint_choices(default)
    except UserError as exc:  # a configured folder that cannot be read: said in the status
        ckpts, why = [], str(exc)
    gr.Markdown(
        "Evaluate a checkpoint on every image of a dataset once (cached on disk), then find where "
        "the learned affinity (AFA) beats raw attention (MHSA) or PAR, and where it hurts. Click a "
        "row, or a best / worst button, to open that image in *Inspect* with its ground truth."
        + (" This public demo offers a bundled subset of the scenes validation images." if public else "")
    )
    with gr.Row():
        C["ds_dataset"] = gr.Dropdown(
            [(d.label, d.id) for d in datasets],
            value=default,
            label="Dataset",
            min_width=240,
            elem_id="ds-dataset",
        )
        C["ds_ckpt"] = gr.Dropdown(
            ckpts, value=ckpts[0][1] if ckpts else None, label="Checkpoint", min_width=240, elem_id="ds-ckpt"
        )
        with gr.Column(scale=0, min_width=160):
            C["ds_crf"] = gr.Checkbox(
                False, label="With dense CRF", interactive=BACKEND.crf_available(), min_width=140
            )
            C["ds_eval_btn"] = gr.Button("Evaluate", variant="primary", elem_id="ds-evaluate")
            C["ds_rescan_btn"] = gr.Button("Rescan checkpoints", size="sm")
    C["ds_status"] = gr.Markdown(
        why or "Pick a dataset and a checkpoint, then press **Evaluate**.", elem_id="ds-status"
    )
    C["ds_totals"] = gr.Markdown(elem_id="ds-totals")
    gr.Markdown("**Best and worst image of each gain** (click to open it in *Inspect*):")
    with gr.Row():
        for i, (best, worst) in enumerate(EXTREME_BUTTONS):
            with gr.Column(min_width=200):
                C[best] = gr.Button(
                    f"best {GAINS[i][0]}", size="sm", interactive=False, elem_id=best.replace("_", "-")
                )
                C[worst] = gr.Button(
                    f"worst {GAINS[i][0]}", size="sm", interactive=False, elem_id=worst.replace("_", "-")
                )
    with gr.Row():
        columns = ["image"] + list(STAGE_COLUMNS.values()) + [g[0] for g in GAINS]
        C["ds_sort"] = gr.Dropdown(
            columns, value=GAINS[1][0], label="Sort by", min_width=160, elem_id="ds-sort"
        )
        C["ds_desc"] = gr.Checkbox(True, label="Largest first", min_width=120, elem_id="ds-desc")
        C["ds_class"] = gr.Dropdown([ANY_CLASS], value=ANY_CLASS, label="Images with class", min_width=160)
        C["ds_name"] = gr.Textbox(label="Name contains", min_width=160)
    C["ds_table"] = gr.Dataframe(
        headers=["image", "labels"],
        interactive=False,
        max_height=440,
        elem_id="ds-table",
        label="Per image: mIoU of each stage and the gains, in points",
    )
    C["ds_table_note"] = gr.Markdown(elem_classes="afa-note")
    C["ds_chart"] = gr.Plot(label="Per-class IoU per stage", elem_id="ds-chart")
    C["ds_conf_stage"] = gr.Dropdown(
        [], label="Which class takes which, in stage", min_width=200, elem_id="ds-conf-stage"
    )
    C["ds_confusion"] = gr.Plot(label="Class confusion", elem_id="ds-confusion")
    with gr.Row():
        C["ds_csv_btn"] = gr.Button(
            "Export the table (CSV)", size="sm", scale=0, min_width=200, elem_id="ds-csv-btn"
        )
        C["ds_csv"] = gr.File(label="CSV", interactive=False, visible=False, elem_id="ds-csv")
    C["ds_state"] = gr.State(None)  # the key of the evaluation shown


# --------------------------------------------------------------------------------------------
# views


def totals_markdown(ev: Any) -> str:
    """The dataset's mIoU per stage, where each stage goes wrong (core's kinds of error, as shares
    of the pixels each can occur in; a kind no stage makes is left out, e.g. unlabelled pixels,
    which the dense evaluation never produces) and the gains between stages (points), as a table."""
    from core.method.metrics import ERROR_KINDS, ERROR_SHARE_OF

    totals = ev.totals()
    head = "| | " + " | ".join(STAGE_COLUMNS[s] for s in ev.stages) + " |"
    rule = "| --- |" + " ---: |" * len(ev.stages)

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    miou = "| mIoU | " + " | ".join(pct(totals[s]["miou"]) for s in ev.stages) + " |"
    acc = "| pixel accuracy | " + " | ".join(pct(totals[s]["pixel_accuracy"]) for s in ev.stages) + " |"
    errors = []
    for code, of in ERROR_SHARE_OF.items():
        shares = [totals[s]["errors"][ERROR_KINDS[code]] for s in ev.stages]
        if any(shares):
            errors.append(f"| {ERROR_KINDS[code]} (% of {of}) | " + " | ".join(pct(v) for v in shares) + " |")
    gains = []
    for column, plus, minus in GAINS:
        if plus in totals and minus in totals and None not in (totals[plus]["miou"], totals[minus]["miou"]):
            gains.append(f"{column}: **{100 * (totals[plus]['miou'] - totals[minus]['miou']):+.1f}**")
    f1 = np.nanmean(ev.cls_f1[: ev.done]) if ev.done else np.nan
    tail = f"Dataset gains: {' · '.join(gains)}. " if gains else ""
    tail += f"Classification F1 {f1:.3f}." if np.isfinite(f1) else ""
    return "\n".join([head, rule, miou, acc, *errors]) + "\n\n" + tail


def status_markdown(ev: Any) -> str:
    info = CHECKPOINTS.resolve(ev.info["checkpoint"]) if ev.info.get("checkpoint") else None
    seconds = ev.info.get("seconds") or float(np.nansum(ev.seconds))
    crf = " with CRF" if ev.info.get("crf") else ""
    name = info.label if info else ev.info["checkpoint"]
    return (
        f"**{ev.done} images** of `{ev.info['dataset']}` evaluated by **{name}**"
        f" ({describe_domain(info)}){crf} in {seconds:.0f} s of model time; cached on disk (a restart "
        "does not redo it). Pseudo labels with one background score, image-level labels from the masks, "
        "the checkpoint's scales: the settings of `python -m core.evaluate`."
    )


def table_views(ev: Any, sort_by: str, descending: bool, class_filter: str | None, name_filter: str) -> dict:
    rows = table_rows(
        ev, sort_by, bool(descending), None if class_filter == ANY_CLASS else class_filter, name_filter or ""
    )
    note = f"{len(rows)} of {ev.done} images."
    if len(rows) > MAX_ROWS:
        note += f" Showing the first {MAX_ROWS}; the CSV has all of them."
    frame = pd.DataFrame(rows[:MAX_ROWS], columns=table_columns(ev))
    return {"ds_table": frame, "ds_table_note": note}


def default_confusion_stage(ev: Any) -> str:
    """The segmentation when the evaluation has it (what a model predicts without labels), else
    its last stage."""
    return "seg_label" if "seg_label" in ev.stages else ev.stages[-1]


def confusion_view(ev: Any, stage: str) -> Any:
    return plots.confusion_figure(ev.classes, *ev.class_shares(stage), STAGE_COLUMNS[stage])


def dataset_views(
    ev: Any, sort_by: str, descending: bool, class_filter: str | None, name_filter: str
) -> dict:
    """Everything the tab shows about one evaluation (read from it, nothing computed by a model)."""
    stage = default_confusion_stage(ev)
    result = {
        "ds_state": ev.key,
        "ds_status": status_markdown(ev),
        "ds_totals": totals_markdown(ev),
        "ds_chart": plots.per_class_iou_figure(
            ev.classes, {STAGE_COLUMNS[s]: t["per_class"] for s, t in ev.totals().items()}
        ),
        "ds_class": gr.update(
            choices=[ANY_CLASS] + ev.classes[1:],
            value=class_filter if class_filter in ev.classes[1:] else ANY_CLASS,
        ),
        "ds_conf_stage": gr.update(
            choices=[(STAGE_COLUMNS[s], s) for s in ev.stages], value=stage
        ),
        "ds_confusion": confusion_view(ev, stage),
    }
    result.update(table_views(ev, sort_by, descending, class_filter, name_filter))
    for (best, worst), (column, (top, bottom)) in zip(EXTREME_BUTTONS, extremes(ev).items()):
        for view, item, word in ((best, top, "best"), (worst, bottom, "worst")):
            label = f"{word} {column}: " + (f"{item[0]} ({item[1]:+.1f})" if item else "–")
            result[view] = gr.update(value=label, interactive=item is not None)
    return result


def empty_views(message: str) -> dict:
    result = {
        "ds_state": None,
        "ds_status": message,
        "ds_totals": "",
        "ds_chart": None,
        "ds_conf_stage": gr.update(choices=[], value=None),
        "ds_confusion": None,
        "ds_table": pd.DataFrame(columns=["image", "labels"]),
        "ds_table_note": "",
    }
    for i, (best, worst) in enumerate(EXTREME_BUTTONS):
        result[best] = gr.update(value=f"best {GAINS[i][0]}", interactive=False)
        result[worst] = gr.update(value=f"worst {GAINS[i][0]}", interactive=False)
    return result


def _pair(dataset_id: str | None, checkpoint_id: str | None):
    dataset = resolve_dataset(dataset_id, PUBLIC["mode"])
    if not checkpoint_id:
        raise UserError("Pick a checkpoint that knows this dataset's classes.")
    checkpoint = CHECKPOINTS.resolve(checkpoint_id)
    classes = dataset_classes(dataset)
    if list(checkpoint.classes) != classes:
        raise UserError(
            f"{checkpoint.label} knows {', '.join(checkpoint.classes[1:])}, not this dataset's "
            f"{', '.join(classes[1:])}."
        )
    return dataset, checkpoint


def _evaluation(key: str | None) -> Any:
    ev = EVALUATIONS.get(key)
    if ev is None:
        raise UserError("Evaluate a checkpoint on a dataset first.")
    return ev


# --------------------------------------------------------------------------------------------
# handlers


@guarded(status="ds_status")
def on_dataset(dataset_id: str | None, crf: bool, sort_by, descending, class_filter, name_filter) -> dict:
    """Another dataset: the checkpoints that fit it, and its cached evaluation if there is one."""
    choices, why = _checkpoint_choices(dataset_id)
    first = choices[0][1] if choices else None
    result = on_pick(dataset_id, first, crf, sort_by, descending, class_filter, name_filter) if first else {}
    if not first:
        result = empty_views(why)
    return {"ds_ckpt": gr.update(choices=choices, value=first), **result}


@guarded(status="ds_status")
def on_rescan(dataset_id: str | None, checkpoint_id: str | None) -> dict:
    """Find new checkpoints (e.g. a run that just saved one); keep the one picked if it is still there."""
    CHECKPOINTS.refresh()
    choices, why = _checkpoint_choices(dataset_id)
    ids = [value for _, value in choices]
    value = checkpoint_id if checkpoint_id in ids else (ids[0] if ids else None)
    return {"ds_ckpt": gr.update(choices=choices, value=value), **({"ds_status": why} if why else {})}


@guarded(status="ds_status")
def on_pick(dataset_id, checkpoint_id, crf: bool, sort_by, descending, class_filter, name_filter) -> dict:
    """A dataset / checkpoint / CRF choice: show its cached evaluation, or say how to make one."""
    if not dataset_id or not checkpoint_id:
        return empty_views("Pick a dataset and a checkpoint, then press **Evaluate**.")
    dataset, checkpoint = _pair(dataset_id, checkpoint_id)
    key = EVALUATIONS.cached_key(checkpoint, dataset, bool(crf))
    if key is None:
        return empty_views(
            f"`{dataset.id}` has not been evaluated with **{checkpoint.label}** yet: press **Evaluate** "
            "(every image once; the results are kept on disk)."
        )
    return dataset_views(EVALUATIONS.get(key), sort_by, descending, class_filter, name_filter)


@guarded(status="ds_status")
def on_evaluate(
    dataset_id, checkpoint_id, crf: bool, sort_by, descending, class_filter, name_filter, progress=PROGRESS
) -> dict:
    """Evaluate (or fetch) the checkpoint on every image of the dataset, with a progress bar."""
    dataset, checkpoint = _pair(dataset_id, checkpoint_id)

    def report(done: int, total: int) -> None:
        progress((done, total), desc="evaluating", unit="images")

    ev = EVALUATIONS.run(checkpoint, dataset, bool(crf), report)
    return dataset_views(ev, sort_by, descending, class_filter, name_filter)


@guarded(status="ds_status")
def on_table_options(key: str | None, sort_by, descending, class_filter, name_filter) -> dict:
    """Sort or filter the table (cached results only)."""
    if not key:
        return {}
    return table_views(_evaluation(key), sort_by, descending, class_filter, name_filter)


@guarded(status="ds_status")
def on_confusion_stage(key: str | None, stage: str | None) -> dict:
    """Another stage for the class confusion (cached results only)."""
    ev = EVALUATIONS.get(key) if key else None
    if ev is None or stage not in ev.stages:
        return {}
    return {"ds_confusion": confusion_view(ev, stage)}


@guarded(status="ds_status")
def on_csv(key: str | None, sort_by, descending, class_filter, name_filter) -> dict:
    """The table as shown (sorted and filtered, every row) as a CSV file."""
    ev = _evaluation(key)
    rows = table_rows(
        ev, sort_by, bool(descending), None if class_filter == ANY_CLASS else class_filter, name_filter or ""
    )
    return {"ds_csv": gr.update(value=str(write_csv(ev, rows)), visible=True)}


@guarded
def open_in_inspect(
    key: str | None, name: str, session: Session | None, opacity: float, smooth: bool, progress=PROGRESS
) -> dict:
    """Open one image of the evaluated dataset in Inspect, with its ground truth and true labels,
    analysed by the evaluated checkpoint with the evaluation's settings (so the scores under its
    maps are the table's)."""
    ev = _evaluation(key)
    if name not in ev.names:
        raise UserError(f"{name} is not an image of this evaluation.")
    checkpoint = CHECKPOINTS.resolve(ev.info["checkpoint"])
    dataset = resolve_dataset(ev.info["dataset"], PUBLIC["mode"])
    _, data = BACKEND.open_evaluation(checkpoint.path, dataset.root, dataset.split)
    rgb, mask = data.load(data.names.index(name))
    old = session or Session()
    if checkpoint.kind == "afa":
        afa_id, cnn_id = checkpoint.id, old.cnn_id
    else:
        afa_id, cnn_id = old.afa_id or CHECKPOINTS.default("afa"), checkpoint.id
    if not afa_id:
        raise UserError("No Transformer checkpoint is available to analyse the image with.")
    progress(0.05, desc=f"opening {name}")
    truth = gt.GroundTruth(mask, tuple(ev.classes), f"{dataset.id} · {name}", name)
    fresh = new_session(
        rgb, afa_id, cnn_id, ev.info.get("crf", False), truth=truth, dense=True, show_errors=old.show_errors
    )
    result = inspect_view.analyse_and_draw(fresh, ViewSettings(opacity=opacity, smooth=smooth), progress)
    result.update(
        image=fresh.image,
        afa_ckpt=afa_id,
        cnn_ckpt=cnn_id or "",
        crf=fresh.crf,
        train_labels=False,
        tabs=gr.Tabs(selected="inspect"),
    )
    return result


def on_row(key, session, opacity, smooth, evt: gr.SelectData) -> dict:
    """A click on a table row: open its image (the first column) in Inspect."""
    row = evt.row_value if isinstance(evt.row_value, (list, tuple)) else None
    if not row:
        return {}
    return open_in_inspect(key, str(row[0]), session, opacity, smooth)


def on_extreme(gain: int, which: str, key, session, opacity, smooth, progress=PROGRESS) -> dict:
    """A best / worst button: open that image in Inspect."""
    try:
        pair = extremes(_evaluation(key))[GAINS[gain][0]]
    except UserError as exc:
        return {"ds_status": f"⚠️ {exc}"}
    item = pair[0 if which == "best" else 1]
    if item is None:
        return {"ds_status": f"No image has both stages of {GAINS[gain][0]}."}
    return open_in_inspect(key, item[0], session, opacity, smooth, progress)


# --------------------------------------------------------------------------------------------
# wiring


def wire(C: dict, demo: gr.Blocks | None = None) -> None:
    pick = ("ds_dataset", "ds_ckpt", "ds_crf") + FILTERS
    shown = ("ds_ckpt",) + VIEWS
    if demo is not None:  # a page opens on the cached evaluation of the default pair, if any
        connect(demo.load, on_pick, C, pick, VIEWS, api_visibility="private", **QUICK)
    connect(
        C["ds_dataset"].input,
        on_dataset,
        C,
        ("ds_dataset", "ds_crf") + FILTERS,
        shown,
        api_visibility="private",
        **QUICK,
    )
    for trigger in ("ds_ckpt", "ds_crf"):
        connect(C[trigger].input, on_pick, C, pick, VIEWS, api_visibility="private", **QUICK)
    connect(C["ds_eval_btn"].click, on_evaluate, C, pick, VIEWS, api_name="evaluate_dataset", **EVALUATION)
    connect(
        C["ds_rescan_btn"].click,
        on_rescan,
        C,
        ("ds_dataset", "ds_ckpt"),
        ("ds_ckpt", "ds_status"),
        api_visibility="private",
        **QUICK,
    )
    for trigger in ("ds_sort", "ds_desc", "ds_class"):
        connect(
            C[trigger].input,
            on_table_options,
            C,
            ("ds_state",) + FILTERS,
            TABLE_VIEWS + ("ds_status",),
            api_visibility="private",
            **QUICK,
        )
    connect(
        C["ds_name"].submit,
        on_table_options,
        C,
        ("ds_state",) + FILTERS,
        TABLE_VIEWS + ("ds_status",),
        api_visibility="private",
        **QUICK,
    )
    connect(
        C["ds_conf_stage"].input,
        on_confusion_stage,
        C,
        ("ds_state", "ds_conf_stage"),
        ("ds_confusion", "ds_status"),
        api_visibility="private",
        **QUICK,
    )
    connect(
        C["ds_csv_btn"].click,
        on_csv,
        C,
        ("ds_state",) + FILTERS,
        ("ds_csv", "ds_status"),
        api_name="dataset_csv",
        **QUICK,
    )
    names, outs = outputs(C, OPEN_VIEWS + ("ds_status",))
    inputs = [C[n] for n in ("ds_state", "session", "opacity", "smooth")]
    C["ds_table"].select(bind(on_row, names), inputs, outs, api_visibility="private", **ANALYSIS)
    for i, (best, worst) in enumerate(EXTREME_BUTTONS):
        for view, which in ((best, "best"), (worst, "worst")):
            C[view].click(
                bind(functools.partial(on_extreme, i, which), names),
                inputs,
                outs,
                api_visibility="private",
                **ANALYSIS,
            )
