"""The Train tab: form -> core.train overrides (public caps), and the live run view."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app import train_view as T
from app.runs import RunManager
from core.errors import UserError

SCENES_ROOT = "data/scenes"  # set by the app_root fixture from core/configs/scenes.yaml
FAKE = [sys.executable, str(Path(__file__).with_name("fake_trainer.py"))]


@pytest.fixture(autouse=True)
def app_root(tmp_path, monkeypatch):
    """A root with the real configs and an (empty) scenes folder, so CI needs no generated data."""
    import shutil

    root = tmp_path / "root"
    from core.config import load_config

    shutil.copytree(T.ROOT / "core" / "configs", root / "core" / "configs")
    scenes_root = load_config(root / "core" / "configs" / "scenes.yaml")["data"]["root"]
    (root / scenes_root).mkdir(parents=True)
    monkeypatch.setattr(sys.modules[__name__], "SCENES_ROOT", scenes_root, raising=False)
    original = T.build_overrides
    monkeypatch.setattr(T, "build_overrides", lambda form, public, root=root: original(form, public, root))
    return root


def test_missing_scenes_data_is_a_message(app_root):
    (app_root / SCENES_ROOT).rmdir()
    with pytest.raises(UserError, match="generate it once"):
        T.build_overrides(T.TrainForm(), public=True)


def test_overrides_are_valid_core_config():
    config, overrides, notes = T.build_overrides(
        T.TrainForm(iters=100, batch=2, crop=128, w_aff=0.2), public=False
    )
    assert config == "core/configs/scenes.yaml" and not notes
    assert (
        "train.max_iters=100" in overrides
        and "loss.aff=0.2" in overrides
        and "model.backbone=mit_b0" in overrides
    )
    from core.config import load_config

    cfg = load_config(
        T.ROOT / config, overrides
    )  # the real configs  # core accepts every key the form writes
    assert cfg["train"]["max_iters"] == 100 and cfg["data"]["crop_size"] == 128


def test_cnn_encoder_trains_cam_only():
    _, overrides, notes = T.build_overrides(T.TrainForm(encoder="resnet18", mode="afa"), public=False)
    assert "model.name=cnn_cam" in overrides and "train.mode=cam" in overrides
    assert notes and "classification branch" in notes[0]


def test_public_mode_caps_and_refuses():
    _, overrides, notes = T.build_overrides(T.TrainForm(iters=99999, batch=64, crop=512), public=True)
    limits = T.PUBLIC_LIMITS
    assert f"train.max_iters={limits['iters']}" in overrides
    assert (
        f"train.batch_size={limits['batch']}" in overrides and f"data.crop_size={limits['crop']}" in overrides
    )
    assert len(notes) == 3
    with pytest.raises(UserError, match="scenes benchmark only"):
        T.build_overrides(T.TrainForm(dataset="voc"), public=True)
    with pytest.raises(UserError, match="not available"):
        T.build_overrides(T.TrainForm(encoder="mit_b5"), public=True)
    _, overrides, _ = T.build_overrides(T.TrainForm(dataset="scenes", data_root="/etc"), public=True)
    assert not any(o.startswith("data.root") for o in overrides)


@pytest.mark.parametrize(
    "form, message",
    [
        (T.TrainForm(crop=100), "multiple of 16"),
        (T.TrainForm(iters=0), "at least 1"),
        (T.TrainForm(w_seg=-1), "between 0 and 10"),
    ],
)
def test_bad_settings_are_messages(form, message):
    with pytest.raises(UserError, match=message):
        T.build_overrides(form, public=False)


def test_bad_run_name_is_a_message():
    with pytest.raises(UserError, match="run name"):
        T.new_run_name(T.TrainForm(name="../../etc"))


def test_run_names():
    assert T.new_run_name(T.TrainForm(name="my run")) == "my-run"
    assert T.new_run_name(T.TrainForm()).startswith("mit_b0-")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    m = RunManager(root=tmp_path, runs_dir=tmp_path / "runs", trainer=FAKE, device="cpu")
    monkeypatch.setattr(T, "MANAGER", m)
    return m


def test_start_refuse_and_view_through_handlers(manager, monkeypatch):
    monkeypatch.setattr(T, "build_overrides", lambda form, public: ("fake.yaml", ["train.max_iters=300"], []))
    on_start, on_stop, on_resume, on_tick, on_select = T.make_handlers(public=True)
    form = [getattr(T.TrainForm(name="one"), f) for f in T.TrainForm.__dataclass_fields__]
    views = on_start(*form)
    assert "Started run 'one'" in views["train_status"]
    form[0] = "two"
    refused = on_start(*form)
    assert "already training" in refused["train_status"] and refused["train_status"].startswith("⚠️")
    deadline = time.time() + 10
    while manager.info("one").step < 6 and time.time() < deadline:
        time.sleep(0.05)
    views = on_tick("one", None)
    assert "running" in views["progress"] and views["runs_table"][0][0] == "one"
    assert isinstance(views["samples"], np.ndarray) and "Classes" in views["samples_note"]
    assert views["curves"] is not None and "fake trainer" in views["log"]
    assert "Stopping" in on_stop("one")["train_status"]
    while manager.info("one").state != "stopped" and time.time() < deadline + 10:
        time.sleep(0.05)
    stopped = on_select("one")
    assert "stopped" in stopped["progress"]
    # nothing changed since: a tick redraws only the progress line, not the curves, samples and log
    again = on_tick("one", stopped["signature"])
    assert again["signature"] == stopped["signature"] and not {"curves", "samples", "log"} & set(again)
    assert "curves" in on_tick("one", views["signature"])  # an older signature: redrawn
    opened = T.on_open_in_inspect("one")  # the fake checkpoint is not a real one: a message, no crash
    assert opened["train_status"].startswith("⚠️")


def test_progress_html_for_dead_run():
    from app.runs import RunInfo

    html = T.progress_html(
        RunInfo(name="x", path=Path("."), state="dead", step=5, max_iters=10, message="gone")
    )
    assert "dead" in html and "50.0%" in html and "gone" in html
    assert "No run" in T.progress_html(None)
