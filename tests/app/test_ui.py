"""Building the Blocks (local and public), and the launch settings of app.py."""

import importlib.util
import os
import sys

import gradio as gr
import pytest

from app.backend import example_images
from app.ui import build_app
from tests.app.helpers import ROOT


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("afa_app_entry", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["afa_app_entry"] = module
    argv, sys.argv = sys.argv, ["app.py"]
    warm = os.environ.get("AFA_APP_WARM")
    os.environ["AFA_APP_WARM"] = "0"  # no background analysis inside the test process
    try:
        # importing app.py builds ``demo`` (the ``gradio app.py`` path) without launching
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
        if warm is None:
            os.environ.pop("AFA_APP_WARM", None)
        else:
            os.environ["AFA_APP_WARM"] = warm
    return module


def test_local_app_has_every_view(fake_backend):
    demo = build_app(public=False, warm=False)
    C = demo.afa_components
    for name in (
        "image",
        "afa_ckpt",
        "cnn_ckpt",
        "labels",
        "crf",
        "opacity",
        "cam_class",
        "cam_cnn",
        "cam_afa",
        "label_cam",
        "label_par",
        "label_mhsa",
        "label_afa",
        "seg",
        "scores",
        "legend",
        "aff_click",
        "aff_learned",
        "aff_mhsa",
        "heads_block",
        "heads_grid",
        "par_class",
        "par_step",
        "par_image",
        "t_root",
        "start_btn",
        "stop_btn",
        "resume_btn",
        "curves",
        "samples",
        "runs_table",
        "timer",
    ):
        assert name in C, name
    assert C["afa_ckpt"].value.endswith("afa_fake.safetensors")
    assert C["cnn_ckpt"].value.endswith("cnn_cam_fake.safetensors")
    assert C["t_root"].visible is True
    assert len(C["t_dataset"].choices) > 1
    assert example_images(), "assets/examples holds example images"
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"analyse", "click_pixel", "set_labels", "set_crf", "train_start", "train_stop"} <= names


def test_public_app_has_no_path_box_and_caps_training(fake_backend):
    demo = build_app(public=True, warm=False)
    C = demo.afa_components
    assert C["t_root"].visible is False  # and build_overrides ignores it in public mode
    assert [c[1] for c in C["t_dataset"].choices] == ["scenes"]
    assert {c[1] for c in C["t_encoder"].choices} == {"mit_b0", "resnet10t", "resnet18"}
    assert C["t_iters"].maximum == 300
    textboxes = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and b.visible is not False]
    # no path anywhere: the Dataset tab's only box filters the table by image name
    assert sorted(b.label for b in textboxes) == ["Name contains", "Run name"]
    datasets = [value for _, value in C["ds_dataset"].choices]
    assert datasets and all(d.startswith("assets/datasets/") for d in datasets)  # the bundled subset only


def test_launch_settings(app_module, monkeypatch):
    public = app_module.launch_kwargs(True)
    assert public["allowed_paths"] == [str(ROOT / "assets")]
    assert public["max_file_size"] == "10mb" and public["show_error"] is False
    assert str(ROOT / "checkpoints") in public["blocked_paths"]
    monkeypatch.setenv("SPACE_ID", "user/afa")
    assert app_module.is_public()
    monkeypatch.delenv("SPACE_ID")
    assert not app_module.is_public() and app_module.is_public(True)
    assert isinstance(app_module.demo, gr.Blocks)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
