"""The Train tab's handlers and its live view of a run (driving a fake trainer)."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app import train_view as T
from app.runs import RunManager
from app.train_form import TrainForm

FAKE = [sys.executable, str(Path(__file__).with_name("fake_trainer.py"))]


@pytest.fixture
def manager(tmp_path, monkeypatch):
    m = RunManager(root=tmp_path, runs_dir=tmp_path / "runs", trainer=FAKE, device="cpu")
    monkeypatch.setattr(T, "MANAGER", m)
    return m


def test_start_refuse_and_view_through_handlers(manager, monkeypatch):
    monkeypatch.setattr(T, "build_overrides", lambda form, public: ("fake.yaml", ["train.max_iters=300"], []))
    on_start, on_stop, on_resume, on_tick, on_select = T.make_handlers(public=True)
    form = [getattr(TrainForm(name="one"), f) for f in TrainForm.__dataclass_fields__]
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
    assert views["resume_btn"]["interactive"] is False  # running: nothing to resume
    assert "Stopping" in on_stop("one")["train_status"]
    while manager.info("one").state != "stopped" and time.time() < deadline + 10:
        time.sleep(0.05)
    stopped = on_select("one")
    assert "stopped" in stopped["progress"]
    assert stopped["resume_btn"]["interactive"] is True  # stopped with a training state: core can resume
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
