"""The Train tab: a form -> ``core.train`` overrides, Start / Stop / Resume, and the live view
of a run folder (progress, curves, latest pseudo labels, log, past runs), polled by a timer
while the tab is open."""

from __future__ import annotations

import html
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from app import plots, render
from app.backend import BACKEND, checkpoint_id
from app.checkpoints import CHECKPOINTS
from app.errors import guarded
from app.runs import ROOT, RunInfo, RunManager
from app.wiring import bind, connect, outputs
from core.errors import UserError

log = logging.getLogger("afa_app")

TRANSFORMER_ENCODERS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")
CNN_ENCODERS = ("resnet10t", "resnet18", "resnet50")
PUBLIC_ENCODERS = ("mit_b0", "resnet10t", "resnet18")
DATASETS = ("scenes", "voc", "coco", "folder")
MODES = ("afa", "cam", "supervised")
PUBLIC_LIMITS = {"iters": 300, "batch": 4, "crop": 128}
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
    "signature",
)
RUN_COLUMNS = ["run", "state", "progress", "last loss", "best mIoU", "checkpoint", "updated"]

MANAGER = RunManager()


@dataclass
class TrainForm:
    """The Train tab's settings, as typed by the user."""

    name: str = ""
    dataset: str = "scenes"
    data_root: str = ""
    encoder: str = "mit_b0"
    mode: str = "afa"
    iters: int = 2000
    batch: int = 4
    crop: int = 256
    w_seg: float = 0.1
    w_aff: float = 0.1
    w_reg: float = 0.01
    use_par: bool = True
    use_aff: bool = True
    use_reg: bool = True
    seed: int = 0
    eval_every: int = 500


def build_overrides(form: TrainForm, public: bool, root: Path = ROOT) -> tuple[str, list[str], list[str]]:
    """``(config path, key=value overrides, notes)`` for ``python -m core.train``.

    Public mode: scenes only, small encoders, and iterations / batch / crop capped."""
    notes: list[str] = []
    dataset = form.dataset if form.dataset in DATASETS else "scenes"
    if public and dataset != "scenes":
        raise UserError("This public demo trains on the scenes benchmark only.")
    config = f"core/configs/{dataset}.yaml"
    if not (root / config).is_file():
        raise UserError(f"There is no config for the {dataset} dataset ({config}).")
    encoders = PUBLIC_ENCODERS if public else TRANSFORMER_ENCODERS + CNN_ENCODERS
    if form.encoder not in encoders:
        raise UserError(
            f"Encoder {form.encoder!r} is not available here; choose one of {', '.join(encoders)}."
        )
    iters, batch, crop = int(form.iters), int(form.batch), int(form.crop)
    if public:
        for key, value in (("iters", iters), ("batch", batch), ("crop", crop)):
            if value > PUBLIC_LIMITS[key]:
                notes.append(f"{key} capped at {PUBLIC_LIMITS[key]} in the public demo")
        iters, batch = min(iters, PUBLIC_LIMITS["iters"]), min(batch, PUBLIC_LIMITS["batch"])
        crop = min(crop, PUBLIC_LIMITS["crop"])
    if iters < 1 or batch < 1:
        raise UserError("Iterations and batch size must be at least 1.")
    if crop < 32 or crop % 16:
        raise UserError("The crop size must be a multiple of 16, at least 32.")
    for label, weight in (
        ("segmentation", form.w_seg),
        ("affinity", form.w_aff),
        ("regularisation", form.w_reg),
    ):
        if not 0.0 <= float(weight) <= 10.0:
            raise UserError(f"The {label} loss weight must be between 0 and 10.")
    cnn = form.encoder in CNN_ENCODERS
    mode = "cam" if cnn else (form.mode if form.mode in MODES else "afa")
    if cnn and form.mode != "cam":
        notes.append("a CNN trains the classification branch only (mode cam)")
    eval_every = max(1, min(int(form.eval_every or iters), iters))
    overrides = [
        f"model.name={'cnn_cam' if cnn else 'afa'}",
        f"model.backbone={form.encoder}",
        f"train.mode={mode}",
        f"train.max_iters={iters}",
        f"train.batch_size={batch}",
        f"data.crop_size={crop}",
        f"loss.seg={float(form.w_seg)}",
        f"loss.aff={float(form.w_aff)}",
        f"loss.reg={float(form.w_reg)}",
        f"train.use_par={str(bool(form.use_par)).lower()}",
        f"train.use_aff={str(bool(form.use_aff)).lower()}",
        f"train.use_reg={str(bool(form.use_reg)).lower()}",
        f"train.seed={int(form.seed)}",
        f"train.eval_every={eval_every}",
        f"train.save_every={max(1, min(250, iters // 4 or 1))}",
        f"train.log_every={max(1, min(20, iters // 50 or 1))}",
    ]
    if dataset == "scenes":  # the encoder pretrained offline for this backbone, when one is shipped
        shipped = Path("checkpoints") / f"encoder_{form.encoder}_fmnist.safetensors"
        overrides.append(f"model.pretrained={shipped if (root / shipped).is_file() else 'null'}")
    if form.data_root and not public and dataset != "scenes":
        if any(c in form.data_root for c in "\n\r\0"):
            raise UserError("The data folder path contains control characters.")
        overrides.append(f"data.root={form.data_root.strip()}")
    _prevalidate(config, overrides, root)
    return config, overrides, notes


def _prevalidate(config: str, overrides: list[str], root: Path) -> None:
    """Let core's config loader reject bad settings now, as a message, not in a dead process."""
    try:
        from core.config import ConfigError, load_config
    except ImportError:
        return
    try:
        cfg = load_config(root / config, overrides)
    except ConfigError as exc:
        raise UserError(f"Invalid settings: {exc}") from exc
    data_root = Path(str(cfg["data"].get("root") or ""))
    data_root = data_root if data_root.is_absolute() else root / data_root
    if cfg["data"].get("name") == "scenes" and not data_root.is_dir():
        raise UserError(
            f"The scenes dataset is not on this server ({data_root.name}/ is missing): generate it once with "
            f"`python -m core.data.scenes --out {cfg['data']['root']}`."
        )


def new_run_name(form: TrainForm) -> str:
    name = (form.name or "").strip()
    if not name:
        return time.strftime(f"{form.encoder}-%Y%m%d-%H%M%S")
    name = re.sub(r"\s+", "-", name)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise UserError("A run name uses letters, digits, '-', '_' or '.', up to 64 characters.")
    return name


# --------------------------------------------------------------------------------------------
# views


def progress_html(info: RunInfo | None) -> str:
    if info is None:
        return "<div class='afa-progress'>No run selected.</div>"
    colours = {
        "running": "#2f7ed8",
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
                "" if r.best_miou is None else f"{r.best_miou:.1f}",
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
    classes = _run_classes(name)
    return grid, render.legend_html(classes, sorted(shown), "Classes")


def _run_classes(name: str) -> list[str]:
    checkpoint = MANAGER.run_dir(name) / "checkpoint.safetensors"
    if checkpoint.is_file():
        try:
            return list(BACKEND.read_meta(checkpoint).get("classes", []))
        except Exception:  # noqa: BLE001 - the file may be mid-write; names are cosmetic
            pass
    try:
        import yaml

        cfg = yaml.safe_load((MANAGER.run_dir(name) / "config.yaml").read_text()) or {}
        root = ROOT / str(cfg.get("data", {}).get("root", ""))
        classes = (root / "classes.txt").read_text().split()
        if classes:
            return classes
    except Exception:  # noqa: BLE001
        pass
    return [f"class {i}" for i in range(256)]


def _pick_run(selected: str | None) -> str | None:
    runs = MANAGER.list_runs()
    names = [r.name for r in runs]
    if selected in names:
        return selected
    active = MANAGER.active()
    if active is not None:
        return active.name
    return names[0] if names else None


def train_views(selected: str | None, last_signature: Any = None, force: bool = True) -> dict:
    """Everything the Train tab shows for one run; unchanged parts are skipped (no flicker)."""
    runs = MANAGER.list_runs()
    name = _pick_run(selected)
    views: dict[str, Any] = {
        "runs_table": runs_table(runs),
        "run_pick": gr.update(choices=[r.name for r in runs], value=name),
    }
    if name is None:
        views.update(
            progress=progress_html(None), curves=None, samples=None, samples_note="", log="", signature=None
        )
        return views
    info = next(r for r in runs if r.name == name)
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
        info = MANAGER.start(name, overrides, config=config)
        message = f"Started run '{info.name}'" + (f" ({'; '.join(notes)})" if notes else "") + "."
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


@guarded(status="train_status")
def on_open_in_inspect(selected: str | None) -> dict:
    """Put the run's checkpoint into the right picker of Inspect and switch to that tab."""
    if not selected:
        raise UserError("Pick a run first.")
    path = MANAGER.run_dir(selected) / "checkpoint.safetensors"
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
            f"iterations, batch {limits['batch']}, crop {limits['crop']}). One run at a time."
        )
    else:
        gr.Markdown(
            "Start `python -m core.train` as a separate process; one run per device at a time. "
            "Stop saves a checkpoint; Resume continues a stopped run."
        )
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            C["t_name"] = gr.Textbox(label="Run name", placeholder="auto", max_lines=1, max_length=64)
            datasets = ["scenes"] if public else list(DATASETS)
            C["t_dataset"] = gr.Dropdown(datasets, value="scenes", label="Dataset")
            C["t_root"] = gr.Textbox(
                label="Data folder (VOC / COCO / folder datasets)",
                max_lines=1,
                visible=not public,
                placeholder="config default",
            )
            encoders = list(PUBLIC_ENCODERS) if public else list(TRANSFORMER_ENCODERS + CNN_ENCODERS)
            with gr.Row():
                C["t_encoder"] = gr.Dropdown(encoders, value="mit_b0", label="Encoder")
                C["t_mode"] = gr.Dropdown(
                    list(MODES),
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
            C["train_status"] = gr.Markdown()
        with gr.Column(scale=2):
            with gr.Row():
                C["run_pick"] = gr.Dropdown([], label="Run", scale=3)
                C["open_btn"] = gr.Button("Open in Inspect", scale=1)
            C["progress"] = gr.HTML(elem_id="train-progress")
            C["curves"] = gr.Plot(label="Loss and mIoU")
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
            C["runs_table"] = gr.Dataframe(headers=RUN_COLUMNS, label="Runs", interactive=False, wrap=True)
    C["timer"] = gr.Timer(POLL_SECONDS, active=False)


def wire(C: dict, public: bool, train_tab, other_tabs) -> None:
    """The Train tab's events; the run view polls only while ``train_tab`` is open."""
    on_start, on_stop, on_resume, on_tick, on_select = make_handlers(public)
    quick = dict(concurrency_id="train", concurrency_limit=2)
    connect(C["start_btn"].click, on_start, C, FORM, TRAIN_VIEWS, api_name="train_start", **quick)
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
