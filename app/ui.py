"""The Gradio app: ``build_app(public) -> gr.Blocks``, one tab per view module.

Each view module (``inspect_view``, ``dataset_view``, ``compare_view``, ``affinity_view``,
``heads_view``, ``par_view``, ``train_view``) has a ``layout`` function that builds its components
into the shared dict ``C`` (name -> component) and a ``wire`` function that connects its events
once every tab exists.
"""

from __future__ import annotations

import os

import gradio as gr

from app import (
    affinity_view,
    analysis,
    compare_view,
    dataset_view,
    heads_view,
    inspect_view,
    par_view,
    train_view,
)
from app.backend import example_images
from app.checkpoints import CHECKPOINTS
from app.state import Session

INTRO = """# AFA Explorer
**Learning Affinity from Attention** (Ru et al., CVPR 2022): weakly-supervised segmentation from
image-level labels with a Transformer. Pick an example or upload an image; see where a CNN and the
Transformer look (CAM), how PAR refines the CAM, how labels spread with raw attention (MHSA) versus the
learned affinity (AFA), and click any pixel to see its affinity and every attention head."""

CSS = """
.afa-legend {font-size: 0.9em}
.afa-note {font-size: 0.9em}
/* maps are drawn at >= 384 px; on a narrow screen they shrink to their panel, never wider.
   Panels have a min_width: a row that cannot fit them side by side wraps (they stack). */
.afa-map img {max-width: 100%; height: auto; object-fit: contain}
"""


def build_app(public: bool = False, warm: bool | None = None) -> gr.Blocks:
    """The whole app. ``public``: Spaces-safe (capped training, no typed paths). ``warm``: analyse
    the first example in the background at start (default: on unless AFA_APP_WARM=0)."""
    if warm is None:
        warm = os.environ.get("AFA_APP_WARM", "1") != "0"
    analysis.MAX_SIDE = int(os.environ.get("AFA_APP_MAX_SIDE", "384" if public else "512"))
    CHECKPOINTS.refresh()
    afa_default, cnn_default = CHECKPOINTS.default("afa"), CHECKPOINTS.default("cnn_cam")
    examples = example_images()
    C: dict = {}

    with gr.Blocks(title="AFA Explorer", analytics_enabled=False) as demo:
        # a session keeps its image (<= 0.8 MB); forget it after 2 idle hours
        C["session"] = gr.State(Session(afa_id=afa_default, cnn_id=cnn_default), time_to_live=7200)
        C["signature"] = gr.State(None)  # of the run the Train tab shows: redraw only on change
        gr.Markdown(INTRO)
        if not afa_default:
            gr.Markdown(
                "⚠️ **No Transformer checkpoint found** in `checkpoints/`. Train one in the *Train* tab "
                "(it appears here when it has saved a checkpoint)."
            )
        with gr.Tabs(selected="inspect") as C["tabs"]:
            with gr.Tab("Inspect", id="inspect") as inspect_tab:
                inspect_view.layout(C, examples)
            with gr.Tab("Dataset", id="dataset") as dataset_tab:
                dataset_view.layout(C, public)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_view.layout(C)
            with gr.Tab("Affinity", id="affinity") as affinity_tab:
                affinity_view.layout(C)
            with gr.Tab("Attention heads", id="heads") as heads_tab:
                heads_view.layout(C)
            with gr.Tab("PAR steps", id="par") as par_tab:
                par_view.layout(C)
            with gr.Tab("Train", id="train") as train_tab:
                train_view.layout(C, public)

        inspect_view.wire(C)
        dataset_view.wire(C, demo)
        compare_view.wire(C)
        affinity_view.wire(C)
        heads_view.wire(C)
        par_view.wire(C)
        train_view.wire(
            C,
            public,
            train_tab,
            other_tabs=(inspect_tab, dataset_tab, compare_tab, affinity_tab, heads_tab, par_tab),
        )
        # the app opens on the first example
        demo.load(
            lambda: examples[0] if examples and afa_default else gr.skip(),
            None,
            C["image"],
            api_visibility="private",
            queue=False,
        )

    if warm:
        analysis.warm_cache(examples[0] if examples else None, afa_default, cnn_default)
    demo.afa_components = C  # for tests
    return demo
