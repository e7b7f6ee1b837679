"""The Gradio layout: ``build_app(public) -> gr.Blocks``. Layout and wiring only; the handlers
live in ``app.handlers`` (analysis tabs) and ``app.train_view`` (Train tab)."""

# No ``from __future__ import annotations`` here: Gradio reads the ``gr.SelectData`` annotation.

import inspect
import logging
import os
import threading
from pathlib import Path

import gradio as gr

from app import handlers as H
from app import train_view as T
from app.backend import BACKEND, ROOT
from app.state import Session

log = logging.getLogger("afa_app")

EXAMPLES_DIR = ROOT / "assets" / "examples"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ANALYSIS_CONCURRENCY = int(os.environ.get("AFA_APP_ANALYSIS_CONCURRENCY", "1"))
CLICK_CONCURRENCY = 4
TRAIN_POLL_SECONDS = 2.0
# Heat maps are sent as JPEG: 5-10x faster to encode than PNG, which is most of a click's cost.
# Label maps stay PNG so that class colours are exact.

INTRO = """# AFA Explorer
**Learning Affinity from Attention** (Ru et al., CVPR 2022): weakly-supervised segmentation from
image-level labels with a Transformer. Pick an example or upload an image; see where a CNN and the
Transformer look (CAM), how PAR refines the CAM, how labels spread with raw attention (MHSA) versus the
learned affinity (AFA), and click any pixel to see its affinity and every attention head."""

PROGRESS = gr.Progress()  # Gradio injects a tracker for parameters defaulting to a Progress

CSS = """
.afa-legend {font-size: 0.9em}
.afa-note {font-size: 0.9em}
"""


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


def example_images() -> list[str]:
    if not EXAMPLES_DIR.is_dir():
        return []
    return [str(p) for p in sorted(EXAMPLES_DIR.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]


def _bind(fn, names):
    """Adapt a handler returning ``{view: value}`` to Gradio's tuple of outputs (missing = unchanged)."""

    def run(*args):
        views = fn(*args) or {}
        return [views.get(name, gr.skip()) for name in names]

    run.__name__ = getattr(fn, "__name__", "handler")
    run.__signature__ = inspect.signature(fn)  # API docs show the handler's parameter names
    return run


def _outputs(components, names):
    names = [n for n in names if n in components]
    return names, [components[n] for n in names]


def warm_cache(afa_id, cnn_id) -> None:
    """Analyse the first example in the background so the first visitor gets it at once."""
    examples = example_images()
    if not examples or not afa_id or not BACKEND.core_available():
        return

    def work():
        try:
            image, notes = BACKEND.read_image(examples[0], H.MAX_SIDE)
            from app.cache import image_digest

            session = Session(
                image=image, image_hash=image_digest(image), image_notes=notes, afa_id=afa_id, cnn_id=cnn_id
            )
            H.analyse_session(session)
            log.info("warm-up analysis of %s done", Path(examples[0]).name)
        except Exception:  # noqa: BLE001 - a warm-up failure only costs the first visitor time
            log.exception("warm-up analysis failed")

    threading.Thread(target=work, name="afa-warmup", daemon=True).start()


def build_app(public: bool = False, warm: bool | None = None) -> gr.Blocks:
    """The whole app. ``public``: Spaces-safe (capped training, no typed paths). ``warm``: analyse
    the first example in the background at start (default: on unless AFA_APP_WARM=0)."""
    if warm is None:
        warm = os.environ.get("AFA_APP_WARM", "1") != "0"
    H.MAX_SIDE = int(os.environ.get("AFA_APP_MAX_SIDE", "384" if public else "512"))
    H.CHECKPOINTS.refresh()
    afa_choices, cnn_choices = H.CHECKPOINTS.choices("afa"), H.CHECKPOINTS.choices("cnn_cam")
    afa_default, cnn_default = H.CHECKPOINTS.default("afa"), H.CHECKPOINTS.default("cnn_cam")
    examples = example_images()
    crf_ok = BACKEND.crf_available()
    on_start, on_stop, on_resume, on_tick, on_select = T.make_handlers(public)
    C = {}

    with gr.Blocks(title="AFA Explorer", analytics_enabled=False) as demo:
        # a session keeps its image (<= 0.8 MB); forget it after 2 idle hours
        C["session"] = gr.State(Session(afa_id=afa_default, cnn_id=cnn_default), time_to_live=7200)
        C["signature"] = gr.State(None)
        gr.Markdown(INTRO)
        if not afa_choices:
            gr.Markdown(
                "⚠️ **No Transformer checkpoint found** in `checkpoints/`. Train one in the *Train* tab "
                "(it appears here when it has saved a checkpoint)."
            )
        with gr.Tabs(selected="inspect") as tabs:
            C["tabs"] = tabs
            # ---------------------------------------------------------------- Inspect
            with gr.Tab("Inspect", id="inspect") as tab_inspect:
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
                            afa_choices,
                            value=afa_default,
                            label="Transformer checkpoint",
                            info="AFA model: CAM, PAR, affinity, attention, segmentation",
                        )
                        C["cnn_ckpt"] = gr.Dropdown(
                            cnn_choices + [("none", "")],
                            value=cnn_default or "",
                            label="CNN checkpoint",
                            info="CNN CAM baseline",
                        )
                        C["labels"] = gr.CheckboxGroup(
                            [],
                            label="Image-level labels",
                            info="Predicted by the model; tick or untick, then Apply.",
                        )
                        with gr.Row():
                            apply_btn = gr.Button("Apply labels", size="sm", variant="primary")
                            predicted_btn = gr.Button("Use predicted", size="sm")
                        C["crf"] = gr.Checkbox(
                            False,
                            label="Dense CRF on the segmentation",
                            interactive=crf_ok,
                            info=None if crf_ok else "pydensecrf is not installed on this server",
                        )
                        C["opacity"] = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay opacity")
                        refresh_btn = gr.Button("Rescan checkpoints", size="sm")
                    with gr.Column(scale=3):
                        C["status"] = gr.Markdown("Upload an image or pick an example.", elem_id="status")
                        with gr.Row():
                            C["cam_class"] = gr.Dropdown([], label="Class for the CAMs", scale=1)
                            C["legend"] = gr.HTML(elem_classes="afa-legend")
                        with gr.Row(equal_height=True):
                            C["cam_cnn"] = gr.Image(
                                elem_id="cam-cnn",
                                label="CNN CAM",
                                interactive=False,
                                format="jpeg",
                                height=300,
                            )
                            C["cam_afa"] = gr.Image(
                                elem_id="cam-afa",
                                label="Transformer CAM",
                                interactive=False,
                                format="jpeg",
                                height=300,
                            )
                        C["cam_note"] = gr.Markdown(elem_classes="afa-note")
                        with gr.Row(equal_height=True):
                            C["label_cam"] = gr.Image(
                                elem_id="label-cam", label="CAM label", interactive=False, format="png"
                            )
                            C["label_par"] = gr.Image(
                                elem_id="label-par", label="PAR label", interactive=False, format="png"
                            )
                            C["label_mhsa"] = gr.Image(
                                elem_id="label-mhsa", label="MHSA-propagated", interactive=False, format="png"
                            )
                            C["label_afa"] = gr.Image(
                                elem_id="label-afa", label="AFA-propagated", interactive=False, format="png"
                            )
                        with gr.Row():
                            with gr.Column():
                                C["seg"] = gr.Image(
                                    elem_id="seg",
                                    label="Segmentation",
                                    interactive=False,
                                    format="png",
                                    height=300,
                                )
                                C["seg_note"] = gr.Markdown(elem_classes="afa-note")
                            C["scores"] = gr.Plot(label="Class scores", elem_id="scores")
            # ---------------------------------------------------------------- Affinity
            with gr.Tab("Affinity", id="affinity") as tab_affinity:
                gr.Markdown(
                    "Click a pixel of the left image: its row of the **learned affinity** (AFA) and of "
                    "the **raw attention** baseline (MHSA), with the clicked point marked."
                )
                with gr.Row(equal_height=True):
                    C["aff_click"] = gr.Image(
                        label="Click a pixel", interactive=False, format="jpeg", elem_id="affinity-click"
                    )
                    C["aff_learned"] = gr.Image(
                        label="Learned affinity (AFA)",
                        interactive=False,
                        format="jpeg",
                        elem_id="affinity-learned",
                    )
                    C["aff_mhsa"] = gr.Image(
                        label="MHSA attention", interactive=False, format="jpeg", elem_id="affinity-mhsa"
                    )
                C["aff_note"] = gr.Markdown(elem_classes="afa-note", elem_id="affinity-note")
                with gr.Row():
                    C["smooth"] = gr.Checkbox(
                        False, label="Smooth token maps (bilinear; off = one square per token)"
                    )
                    C["click_x"] = gr.Number(label="x", precision=0, minimum=0, scale=0, min_width=90)
                    C["click_y"] = gr.Number(label="y", precision=0, minimum=0, scale=0, min_width=90)
                    goto_btn = gr.Button("Show pixel", size="sm", scale=0)
            # ---------------------------------------------------------------- Attention heads
            with gr.Tab("Attention heads", id="heads") as tab_heads:
                gr.Markdown(
                    "Pick a block (any stage) and click a pixel: every head's attention from that pixel."
                )
                C["heads_block"] = gr.Dropdown([], label="Block")
                with gr.Row():
                    C["heads_click"] = gr.Image(
                        label="Click a pixel",
                        interactive=False,
                        format="jpeg",
                        scale=1,
                        elem_id="heads-click",
                    )
                    C["heads_grid"] = gr.Image(
                        label="Heads",
                        show_label=False,
                        interactive=False,
                        format="jpeg",
                        scale=2,
                        elem_id="heads-grid",
                    )
                C["heads_note"] = gr.Markdown(elem_classes="afa-note")
            # ---------------------------------------------------------------- PAR steps
            with gr.Tab("PAR steps", id="par") as tab_par:
                gr.Markdown("Pixel-Adaptive Refinement, one iteration at a time, for the chosen class.")
                with gr.Row():
                    C["par_class"] = gr.Dropdown([], label="Class")
                    C["par_step"] = gr.Slider(
                        0, 10, value=0, step=1, label="PAR iteration (0 = before PAR)", elem_id="par-step"
                    )
                with gr.Row():
                    C["par_image"] = gr.Image(
                        elem_id="par-image", label="Score map", interactive=False, format="jpeg", scale=1
                    )
                    C["par_strip"] = gr.Image(
                        label="All iterations", show_label=False, interactive=False, format="jpeg", scale=2
                    )
                C["par_note"] = gr.Markdown(elem_classes="afa-note")
            # ---------------------------------------------------------------- Train
            with gr.Tab("Train", id="train") as tab_train:
                _train_tab(C, public)

        # ------------------------------------------------------------------- events
        analysis = dict(concurrency_id="analysis", concurrency_limit=ANALYSIS_CONCURRENCY)
        quick = dict(concurrency_id="quick", concurrency_limit=CLICK_CONCURRENCY, show_progress="hidden")
        all_names, all_outputs = _outputs(C, H.ALL_VIEWS)

        def analyse(source, afa_id, cnn_id, crf, opacity, smooth, session, progress=PROGRESS):
            views = H.on_image(source, afa_id, cnn_id, crf, opacity, smooth, session, progress=progress)
            return [views.get(n, gr.skip()) for n in all_names]

        C["image"].change(
            analyse,
            [C[k] for k in ("image", "afa_ckpt", "cnn_ckpt", "crf", "opacity", "smooth", "session")],
            all_outputs,
            api_name="analyse",
            **analysis,
        )

        def change_model(afa_id, cnn_id, class_id, opacity, smooth, session, progress=PROGRESS):
            views = H.on_model_change(afa_id, cnn_id, class_id, opacity, smooth, session, progress=progress)
            return [views.get(n, gr.skip()) for n in all_names]

        model_inputs = [C[k] for k in ("afa_ckpt", "cnn_ckpt", "cam_class", "opacity", "smooth", "session")]
        C["afa_ckpt"].change(change_model, model_inputs, all_outputs, api_name="set_checkpoint", **analysis)
        C["cnn_ckpt"].change(change_model, model_inputs, all_outputs, api_visibility="private", **analysis)

        def apply_labels(labels, class_id, opacity, smooth, session, progress=PROGRESS):
            views = H.on_labels_override(labels or [], class_id, opacity, smooth, session, progress=progress)
            return [views.get(n, gr.skip()) for n in all_names]

        def predicted_labels(class_id, opacity, smooth, session, progress=PROGRESS):
            views = H.on_labels_override(None, class_id, opacity, smooth, session, progress=progress)
            return [views.get(n, gr.skip()) for n in all_names]

        apply_btn.click(
            apply_labels,
            [C[k] for k in ("labels", "cam_class", "opacity", "smooth", "session")],
            all_outputs,
            api_name="set_labels",
            **analysis,
        )
        predicted_btn.click(
            predicted_labels,
            [C[k] for k in ("cam_class", "opacity", "smooth", "session")],
            all_outputs,
            api_visibility="private",
            **analysis,
        )

        def toggle_crf(crf, class_id, opacity, smooth, session, progress=PROGRESS):
            views = H.on_crf_toggle(crf, class_id, opacity, smooth, session, progress=progress)
            return [views.get(n, gr.skip()) for n in all_names]

        C["crf"].input(
            toggle_crf,
            [C[k] for k in ("crf", "cam_class", "opacity", "smooth", "session")],
            all_outputs,
            api_name="set_crf",
            **analysis,
        )

        names, outs = _outputs(C, ("cam_cnn", "cam_afa", "cam_note", "status"))
        C["cam_class"].input(
            _bind(H.on_class_change, names),
            [C["cam_class"], C["opacity"], C["session"]],
            outs,
            api_visibility="private",
            **quick,
        )
        names, outs = _outputs(C, H.INSPECT_VIEWS + H.AFFINITY_VIEWS)
        C["opacity"].release(
            _bind(H.on_opacity, names),
            [C[k] for k in ("opacity", "cam_class", "smooth", "session")],
            outs,
            api_visibility="private",
            **quick,
        )

        click_names, click_outs = _outputs(
            C, ("session", "status", "click_x", "click_y") + H.AFFINITY_VIEWS + H.HEADS_VIEWS
        )

        def select_pixel(session, block, opacity, smooth, evt: gr.SelectData):
            point = evt.index if isinstance(evt.index, (list, tuple)) else None
            views = H.on_click(session, point, block, opacity, smooth)
            if point is not None and "session" in views:
                views["click_x"], views["click_y"] = views["session"].point
            return [views.get(n, gr.skip()) for n in click_names]

        click_inputs = [C[k] for k in ("session", "heads_block", "opacity", "smooth")]
        C["aff_click"].select(select_pixel, click_inputs, click_outs, api_visibility="private", **quick)
        C["heads_click"].select(select_pixel, click_inputs, click_outs, api_visibility="private", **quick)

        def click_at(x, y, session, block, opacity, smooth):
            views = H.on_click(session, None if x is None or y is None else (x, y), block, opacity, smooth)
            return [views.get(n, gr.skip()) for n in click_names]

        goto_btn.click(
            click_at, [C["click_x"], C["click_y"]] + click_inputs, click_outs, api_name="click_pixel", **quick
        )

        names, outs = _outputs(C, ("status",) + H.AFFINITY_VIEWS + H.HEADS_VIEWS)
        C["smooth"].input(
            _bind(H.on_smooth, names),
            [C[k] for k in ("smooth", "heads_block", "opacity", "session")],
            outs,
            api_visibility="private",
            **quick,
        )
        C["heads_block"].input(
            _bind(H.on_block_change, names),
            [C["heads_block"], C["smooth"], C["session"]],
            outs,
            api_name="set_block",
            **quick,
        )
        names, outs = _outputs(C, ("status",) + H.PAR_VIEWS)
        C["par_class"].input(
            _bind(H.on_par_class, names),
            [C["par_class"], C["par_step"], C["session"]],
            outs,
            api_visibility="private",
            **quick,
        )
        C["par_step"].change(
            _bind(H.on_par_step, names),
            [C["par_class"], C["par_step"], C["session"]],
            outs,
            api_name="par_step",
            trigger_mode="always_last",
            **quick,
        )

        def rescan():
            H.CHECKPOINTS.refresh()
            afa, cnn = H.CHECKPOINTS.choices("afa"), H.CHECKPOINTS.choices("cnn_cam")
            gr.Info(f"{len(afa)} Transformer and {len(cnn)} CNN checkpoints.")
            return gr.update(choices=afa), gr.update(choices=cnn + [("none", "")])

        refresh_btn.click(rescan, None, [C["afa_ckpt"], C["cnn_ckpt"]], api_visibility="private", queue=False)
        _wire_train(C, public, on_start, on_stop, on_resume, on_tick, on_select)

        # The run view polls only while the Train tab is open.
        train_names, train_outs = _outputs(C, T.TRAIN_VIEWS)

        def open_train_tab(selected):
            views = on_select(selected)
            return [gr.Timer(active=True)] + [views.get(n, gr.skip()) for n in train_names]

        tab_train.select(
            open_train_tab,
            [C["run_pick"]],
            [C["timer"]] + train_outs,
            api_visibility="private",
            concurrency_id="train",
            concurrency_limit=2,
        )
        for tab in (tab_inspect, tab_affinity, tab_heads, tab_par):
            tab.select(
                lambda: gr.Timer(active=False), None, C["timer"], api_visibility="private", queue=False
            )

        def first_visit():
            return examples[0] if examples and afa_default else gr.skip()

        demo.load(first_visit, None, C["image"], api_visibility="private", queue=False)

    if warm:
        warm_cache(afa_default, cnn_default)
    demo.afa_components = C  # for tests
    return demo


def _train_tab(C, public):
    limits = T.PUBLIC_LIMITS
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
            datasets = ["scenes"] if public else list(T.DATASETS)
            C["t_dataset"] = gr.Dropdown(datasets, value="scenes", label="Dataset")
            C["t_root"] = gr.Textbox(
                label="Data folder (VOC / COCO / folder datasets)",
                max_lines=1,
                visible=not public,
                placeholder="config default",
            )
            encoders = list(T.PUBLIC_ENCODERS) if public else list(T.TRANSFORMER_ENCODERS + T.CNN_ENCODERS)
            with gr.Row():
                C["t_encoder"] = gr.Dropdown(encoders, value="mit_b0", label="Encoder")
                C["t_mode"] = gr.Dropdown(
                    list(T.MODES),
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
            C["runs_table"] = gr.Dataframe(headers=T.RUN_COLUMNS, label="Runs", interactive=False, wrap=True)
    C["timer"] = gr.Timer(TRAIN_POLL_SECONDS, active=False)


def _wire_train(C, public, on_start, on_stop, on_resume, on_tick, on_select):
    form = [
        C[k]
        for k in (
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
    ]
    names, outs = _outputs(C, T.TRAIN_VIEWS)
    quick = dict(concurrency_id="train", concurrency_limit=2)
    C["start_btn"].click(_bind(on_start, names), form, outs, api_name="train_start", **quick)
    C["stop_btn"].click(_bind(on_stop, names), [C["run_pick"]], outs, api_name="train_stop", **quick)
    C["resume_btn"].click(_bind(on_resume, names), [C["run_pick"]], outs, api_name="train_resume", **quick)
    C["run_pick"].input(_bind(on_select, names), [C["run_pick"]], outs, api_visibility="private", **quick)
    C["timer"].tick(
        _bind(on_tick, names),
        [C["run_pick"], C["signature"]],
        outs,
        api_visibility="private",
        show_progress="hidden",
        **quick,
    )

    def pick_from_table(evt: gr.SelectData):
        row = evt.row_value if isinstance(getattr(evt, "row_value", None), list) else None
        name = row[0] if row else None
        views = on_select(name) if name else {}
        return [views.get(n, gr.skip()) for n in names]

    C["runs_table"].select(pick_from_table, None, outs, api_visibility="private", **quick)
    open_names, open_outs = _outputs(C, ("afa_ckpt", "cnn_ckpt", "tabs", "train_status"))
    C["open_btn"].click(
        _bind(T.on_open_in_inspect, open_names), [C["run_pick"]], open_outs, api_name="open_run", **quick
    )
