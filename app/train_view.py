"""The Train tab: a form -> ``core.train`` overrides, Start / Stop / Resume, and the live view
of a run folder (progress, curves, latest pseudo labels, log, past runs), polled by a timer
while the tab is open."""

from __future__ import annotations

import html
import logging
import time
from typing import Any

import gradio as gr
import numpy as np

from app import plots, render
from app.backend import BACKEND, checkpoint_id
from app.checkpoints import CHECKPOINTS
from app.errors import guarded
from app.runs import RunInfo, RunManager
from app.train_data import prepare_scenes
from app.train_form import (
    PUBLIC_LIMITS,
    TrainForm,
    build_overrides,
    dataset_choices,
    encoder_choices,
    new_run_name,
)
from app.wiring import PROGRESS, bind, connect, outputs
from core import catalog
from core.errors import UserError
from core.runstate import CHECKPOINT_FILE

log = logging.getLogger("afa_app")

PUBLIC_KEEP_RUNS = 8
TRAIN_VIEWS = (
    "train_status",
    "progress",
    "curves",
    "samples",
    "samples_note",
    "log",
    "runs_table",
    "run_pick",
    "resume_btn",
    "signature",
)
RUN_COLUMNS = ["run", "state", "progress", "last loss", "best mIoU", "checkpoint", "updated"]
# every header on one line at 1280 px (unset, "checkpoint" was squeezed to one letter a line)
RUN_COLUMN_WIDTHS = ["17%", "11%", "13%", "10%", "16%", "14%", "19%"]

MANAGER = RunManager()


# --------------------------------------------------------------------------------------------
# views


def progress_html(info: RunInfo | None) -> str:
    if info is None:
        return "<div class='afa-progress'>No run selected.</div>"
    colours = {
        "running": "#2f7ed8",
        "preparing": "#2f7ed8",
        "starting": "#2f7ed8",
        "stopping": "#e69f00",
        "finished": "#2ca02c",
        "stopped": "#7f7f7f",
        "failed": "#d62728",
        "dead": "#d62728",
    }
    colour = colours.get(info.state, "#7f7f7f")
    pct = 100.0 * info.progress
    eta = _eta(info)
    message = f"<div style='margin-top:4px'>{html.escape(info.message)}</div>" if info.message else ""
    return (
        f"<div class='afa-progress'><b>{html.escape(info.name)}</b> · "
        f"<span style='color:{colour};font-weight:600'>{html.escape(info.state)}</span> · "
        f"step {info.step} / {info.max_iters or '?'}{eta}"
        "<div style='background:#e5e5e5;border-radius:4px;height:14px;margin-top:4px;overflow:hidden'>"
        f"<div style='width:{pct:.1f}%;background:{colour};height:100%'></div></div>{message}</div>"
    )


def _eta(info: RunInfo) -> str:
    if info.state != "running" or not info.max_iters:
        return ""
    times = [
        r.get("step_time") for r in MANAGER.metrics(info.name)[-20:] if r.get("kind", "train") == "train"
    ]
    times = [t for t in times if isinstance(t, (int, float)) and t > 0]
    if not times:
        return ""
    seconds = float(np.median(times)) * max(0, info.max_iters - info.step)
    return f" · about {_duration(seconds)} left"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def runs_table(runs: list[RunInfo]) -> list[list[Any]]:
    rows = []
    for r in runs:
        rows.append(
            [
                r.name,
                r.state,
                f"{r.step}/{r.max_iters or '?'}",
                "" if r.last_loss is None else f"{r.last_loss:.4f}",
                "" if r.best_miou is None else f"{100 * r.best_miou[1]:.1f} ({r.best_miou[0]})",
                "yes" if r.has_checkpoint else "",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)) if r.updated else "",
            ]
        )
    return rows


def samples_view(name: str) -> tuple[np.ndarray | None, str]:
    """The latest training batch: image and its label maps, one row per sample."""
    samples = MANAGER.samples(name)
    if not samples or "image" not in samples:
        return None, "No pseudo labels yet (written after the first logged step)."
    images = np.asarray(samples["image"])
    if images.ndim == 3:
        images = images[None]
    maps = [k for k in ("cam_label", "par_label", "aff_label", "seg_pred") if k in samples]
    tiles, titles = [], []
    shown: set[int] = set()
    n = min(len(images), 4)
    for i in range(n):
        image = render.resize_long_side(images[i].astype(np.uint8), 160)
        tiles.append(image)
        titles.append(f"image {i + 1}")
        for key in maps:
            label = np.asarray(samples[key])[i]
            shown.update(int(v) for v in np.unique(label))
            tiles.append(render.colorize_labels(render.fit_to(label, image.shape[:2])))
            titles.append(key.replace("_", " "))
    grid = render.tile_grid(tiles, titles, columns=1 + len(maps))
    classes = MANAGER.class_names(name) or []  # unknown ids are named "class N"
    return grid, render.legend_html(classes, sorted(shown), "Classes")


def _pick_run(selected: str | None) -> str | None:
    runs = MANAGER.list_runs()
    names = [r.name for r in runs]
    if selected in names:
        return selected
    active = MANAGER.active()
    if active is not None and active.name in names:  # not yet while a Start prepares its data
        return active.name
    return names[0] if names else None


def train_views(selected: str | None, last_signature: Any = None, force: bool = True) -> dict:
    """Everything the Train tab shows for one run; unchanged parts are skipped (no flicker)."""
    runs = MANAGER.list_runs()
    name = _pick_run(selected)
    info = next((r for r in runs if r.name == name), None)
    views: dict[str, Any] = {
        "runs_table": runs_table(runs),
        "run_pick": gr.update(choices=[r.name for r in runs], value=name),
        "resume_btn": gr.update(interactive=info is not None and info.can_resume),  # only where core can
    }
    if info is None:
        views.update(
            progress=progress_html(None), curves=None, samples=None, samples_note="", log="", signature=None
        )
        return views
    signature = (name, info.state) + MANAGER.signature(name)
    views["progress"] = progress_html(info)
    views["signature"] = signature
    if force or signature != last_signature:
        views["curves"] = plots.training_figure(MANAGER.metrics(name))
        views["samples"], views["samples_note"] = samples_view(name)
        views["log"] = MANAGER.log_tail(name)
    return views


# --------------------------------------------------------------------------------------------
# handlers


def make_handlers(public: bool):
    """The Train tab's handlers, closed over the public flag."""

    @guarded(status="train_status")
    def on_start(
        name,
        dataset,
        data_root,
        encoder,
        mode,
        iters,
        batch,
        crop,
        w_seg,
        w_aff,
        w_reg,
        use_par,
        use_aff,
        use_reg,
        seed,
        eval_every,
        progress=PROGRESS,
    ) -> dict:
        form = TrainForm(
            name or "",
            dataset,
            data_root or "",
            encoder,
            mode,
            int(iters or 0),
            int(batch or 0),
            int(crop or 0),
            float(w_seg or 0),
            float(w_aff or 0),
            float(w_reg or 0),
            bool(use_par),
            bool(use_aff),
            bool(use_reg),
            int(seed or 0),
            int(eval_every or 0),
        )
        name = new_run_name(form)
        config, overrides, notes = build_overrides(form, public)
        if public:
            MANAGER.prune(PUBLIC_KEEP_RUNS)
        data_notes: list[str] = []

        def prepare() -> list[str]:  # runs once this Start holds the device: no two generate at once
            extra, lines = prepare_scenes(config, overrides, public, _announcing(progress), MANAGER.root)
            data_notes.extend(lines)
            return extra

        info = MANAGER.start(name, overrides, config=config, prepare=prepare)
        procedural = [n for n in data_notes if n.startswith("Fashion-MNIST")]
        notes += [n for n in data_notes if n not in procedural]
        message = f"Started run '{info.name}'" + (f" ({'; '.join(notes)})" if notes else "") + "."
        message = "\n\n".join([message, *procedural])  # the data source, in one line of its own
        gr.Info(message)
        views = train_views(info.name)
        views["train_status"] = message
        return views

    @guarded(status="train_status")
    def on_stop(selected: str | None) -> dict:
        name = _pick_run(selected)
        if name is None:
            raise UserError("There is no run to stop.")
        message = MANAGER.stop(name)
        gr.Info(message)
        views = train_views(name)
        views["train_status"] = message
        return views

    @guarded(status="train_status")
    def on_resume(selected: str | None) -> dict:
        if not selected:
            raise UserError("Pick a run to resume.")
        info = MANAGER.resume(selected)
        message = f"Resumed run '{info.name}'."
        gr.Info(message)
        views = train_views(info.name)
        views["train_status"] = message
        return views

    @guarded(status="train_status")
    def on_tick(selected: str | None, signature: Any) -> dict:
        views = train_views(selected, signature, force=False)
        new = views.get("signature")
        if signature and new and signature[0] == new[0] and signature[1] != new[1]:
            name, state = new[0], new[1]
            if state in ("dead", "failed"):
                message = f"Run '{name}' {'died' if state == 'dead' else 'failed'}: see its log below."
                gr.Warning(message)
                views["train_status"] = f"⚠️ {message}"
            elif state in ("finished", "stopped"):
                gr.Info(f"Run '{name}' {state}; its checkpoint can be opened in Inspect.")
        return views

    @guarded(status="train_status")
    def on_select(selected: str | None) -> dict:
        return train_views(selected)

    return on_start, on_stop, on_resume, on_tick, on_select


def _announcing(progress):
    """Gradio's ``progress`` tracker that also shows a toast when generation begins."""
    announced: list[bool] = []

    def track(value, desc=None, unit="steps"):
        if not announced:
            announced.append(True)
            gr.Info("Generating the scenes data this run needs (once per server); the run starts after it.")
        progress(value, desc=desc, unit=unit)

    return track


@guarded(status="train_status")
def on_open_in_inspect(selected: str | None) -> dict:
    """Put the run's checkpoint into the right picker of Inspect and switch to that tab."""
    if not selected:
        raise UserError("Pick a run first.")
    path = MANAGER.run_dir(selected) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"Run '{selected}' has not saved a checkpoint yet.")
    try:
        BACKEND.read_meta(path)
    except UserError as exc:
        raise UserError(f"The checkpoint of run '{selected}' cannot be opened: {exc}") from exc
    CHECKPOINTS.refresh()
    rel = checkpoint_id(path)
    info = CHECKPOINTS.resolve(rel)
    target = "afa_ckpt" if info.kind != "cnn_cam" else "cnn_ckpt"
    return {
        target: gr.update(choices=CHECKPOINTS.picker_choices(info.kind), value=info.id),
        "tabs": gr.Tabs(selected="inspect"),
        "train_status": f"Opened {info.label} in Inspect.",
    }


# --------------------------------------------------------------------------------------------
# layout and wiring

POLL_SECONDS = 2.0  # the run view's refresh while the tab is open
FORM = (  # the form's components, in the order of TrainForm's fields and on_start's parameters
    "t_name",
    "t_dataset",
    "t_root",
    "t_encoder",
    "t_mode",
    "t_iters",
    "t_batch",
    "t_crop",
    "t_wseg",
    "t_waff",
    "t_wreg",
    "t_par",
    "t_aff",
    "t_reg",
    "t_seed",
    "t_eval",
)


def layout(C: dict, public: bool) -> None:
    limits = PUBLIC_LIMITS
    if public:
        gr.Markdown(
            f"Public demo: a small run on the offline **scenes** benchmark (at most {limits['iters']} "
            f"iterations, batch {limits['batch']}, crop {limits['crop']}). One run at a time. "
            "The first Start on this server also generates the small data set (under a minute)."
        )
    else:
        gr.Markdown(
            "Start `python -m core.train` as a separate process; one run per device at a time. "
            "Stop saves a checkpoint; Resume continues a stopped run. A scenes run whose data is "
            "missing generates it first (the canonical benchmark, a few minutes)."
        )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            C["t_name"] = gr.Textbox(label="Run name", placeholder="auto", max_lines=1, max_length=64)
            C["t_dataset"] = gr.Dropdown(dataset_choices(public), value="scenes", label="Dataset")
            C["t_root"] = gr.Textbox(
                label="Data folder (VOC / COCO / folder datasets)",
                max_lines=1,
                visible=not public,
                placeholder="config default",
            )
            with gr.Row():
                C["t_encoder"] = gr.Dropdown(encoder_choices(public), value="mit_b0", label="Encoder")
                C["t_mode"] = gr.Dropdown(
                    list(catalog.training_modes("afa")),
                    value="afa",
                    label="Mode",
                    info="afa; cam = classification only; supervised = masks",
                )
            with gr.Row():
                C["t_iters"] = gr.Number(
                    limits["iters"] if public else 2000,
                    label="Iterations",
                    precision=0,
                    minimum=1,
                    maximum=limits["iters"] if public else None,
                )
                C["t_batch"] = gr.Number(
                    4, label="Batch", precision=0, minimum=1, maximum=limits["batch"] if public else None
                )
                C["t_crop"] = gr.Number(
                    limits["crop"] if public else 256,
                    label="Crop",
                    precision=0,
                    minimum=32,
                    step=16,
                    maximum=limits["crop"] if public else None,
                )
            with gr.Row():
                C["t_wseg"] = gr.Number(0.1, label="w seg", minimum=0, maximum=10)
                C["t_waff"] = gr.Number(0.1, label="w aff", minimum=0, maximum=10)
                C["t_wreg"] = gr.Number(0.01, label="w reg", minimum=0, maximum=10)
            with gr.Row():
                C["t_par"] = gr.Checkbox(True, label="PAR")
                C["t_aff"] = gr.Checkbox(True, label="affinity")
                C["t_reg"] = gr.Checkbox(True, label="L_reg")
            with gr.Row():
                C["t_seed"] = gr.Number(0, label="Seed", precision=0)
                C["t_eval"] = gr.Number(50 if public else 500, label="Evaluate every", precision=0, minimum=1)
            with gr.Row():
                C["start_btn"] = gr.Button("Start", variant="primary")
                C["stop_btn"] = gr.Button("Stop", variant="stop")
                C["resume_btn"] = gr.Button("Resume")
            C["train_status"] = gr.Markdown(elem_id="train-status")
        with gr.Column(scale=2):
            with gr.Row():
                C["run_pick"] = gr.Dropdown([], label="Run", scale=3)
                C["open_btn"] = gr.Button("Open in Inspect", scale=1)
            C["progress"] = gr.HTML(elem_id="train-progress")
            C["curves"] = gr.Plot(label="Loss and mIoU", elem_id="train-curves")
            C["samples"] = gr.Image(
                label="Latest pseudo labels",
                show_label=False,
                interactive=False,
                format="png",
                elem_id="samples",
            )
            C["samples_note"] = gr.HTML(elem_classes="afa-legend")
            with gr.Accordion("Log (last lines)", open=False):
                C["log"] = gr.Code(label="train.log", language=None, lines=12, interactive=False)
            C["runs_table"] = gr.Dataframe(
                headers=RUN_COLUMNS, label="Runs", interactive=False, wrap=True,
                column_widths=RUN_COLUMN_WIDTHS,
            )
    C["timer"] = gr.Timer(POLL_SECONDS, active=False)


def wire(C: dict, public: bool, train_tab, other_tabs) -> None:
    """The Train tab's events; the run view polls only while ``train_tab`` is open."""
    on_start, on_stop, on_resume, on_tick, on_select = make_handlers(public)
    quick = dict(concurrency_id="train", concurrency_limit=2)
    # Start has its own pool: while one Start generates data (a minute), a second one is answered
    # at once ("one run per device") and the run view keeps polling
    connect(
        C["start_btn"].click,
        on_start,
        C,
        FORM,
        TRAIN_VIEWS,
        api_name="train_start",
        concurrency_id="train_start",
        concurrency_limit=4,
        show_progress_on=[C["curves"]],  # the largest view, empty before a run: room for the bar
    )
    connect(C["stop_btn"].click, on_stop, C, ("run_pick",), TRAIN_VIEWS, api_name="train_stop", **quick)
    connect(C["resume_btn"].click, on_resume, C, ("run_pick",), TRAIN_VIEWS, api_name="train_resume", **quick)
    connect(C["run_pick"].input, on_select, C, ("run_pick",), TRAIN_VIEWS, api_visibility="private", **quick)
    connect(
        C["timer"].tick,
        on_tick,
        C,
        ("run_pick", "signature"),
        TRAIN_VIEWS,
        api_visibility="private",
        show_progress="hidden",
        **quick,
    )

    def pick_from_table(evt: gr.SelectData) -> dict:
        row = evt.row_value if isinstance(getattr(evt, "row_value", None), list) else None
        return on_select(row[0]) if row else {}

    connect(C["runs_table"].select, pick_from_table, C, (), TRAIN_VIEWS, api_visibility="private", **quick)
    connect(
        C["open_btn"].click,
        on_open_in_inspect,
        C,
        ("run_pick",),
        ("afa_ckpt", "cnn_ckpt", "tabs", "train_status"),
        api_name="open_run",
        **quick,
    )

    names, outs = outputs(C, TRAIN_VIEWS)
    open_tab = bind(on_select, names)
    train_tab.select(
        lambda selected: [gr.Timer(active=True)] + open_tab(selected),
        [C["run_pick"]],
        [C["timer"]] + outs,
        api_visibility="private",
        **quick,
    )
    for tab in other_tabs:
        tab.select(lambda: gr.Timer(active=False), None, C["timer"], api_visibility="private", queue=False)
