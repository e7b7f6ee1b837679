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
    monkeypatch.setattr(T, "prepare_scenes", lambda *args: ([], []))  # no data to prepare for fake.yaml
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


# ------------------------------------------------------------------------------------------------
# Start on a server without the scenes data: generated first, once, then the run starts


class Progress:
    """Records what Gradio's progress tracker would be told."""

    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, unit="steps"):
        self.calls.append((value, desc, unit))


@pytest.fixture
def fresh(manager, monkeypatch):
    """A server whose app root (``manager.root``) has no data/ yet; public demo sets of 6 + 3 images."""
    import os
    import signal

    from app.runs import pid_alive

    monkeypatch.setenv("AFA_APP_PUBLIC_SCENES", "6,3")
    yield manager
    for run in manager.list_runs():
        if run.pid and pid_alive(run.pid):
            os.kill(run.pid, signal.SIGKILL)


def form_values(**changes):
    form = TrainForm(**changes)
    return [getattr(form, f) for f in TrainForm.__dataclass_fields__]


def started_args(manager, name):
    """The command line the run was started with (first line of its train.log)."""
    return manager.log_tail(name, lines=1000).split("\n")[1]


def have_fashion_mnist() -> bool:
    from core.data.scenes import find_fashion_mnist

    try:
        find_fashion_mnist()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not installed (dataset-fashion-mnist)")
def test_start_generates_the_missing_data_then_starts(fresh):
    from core.data.scenes import is_complete, read_meta

    on_start = T.make_handlers(public=True)[0]
    progress = Progress()
    views = on_start(*form_values(name="first"), progress=progress)
    status = views["train_status"]
    assert (
        status.startswith("Started run 'first'")
        and "generated 9 scenes images into data/scenes-demo" in status
    )
    assert "\n" not in status  # the source is the usual one: nothing to say about it
    demo = fresh.root / "data" / "scenes-demo"
    assert is_complete(demo) and not (fresh.root / "data" / "scenes").exists()  # never the benchmark's folder
    meta = read_meta(demo)
    assert meta["source"] == "fashion-mnist" and meta["canonical"] and (meta["train"], meta["val"]) == (6, 3)
    assert progress.calls[-1][0] == (9, 9) and "Generating the scenes data" in progress.calls[-1][1]
    assert progress.calls[0][0] == (1, 9)  # the first image and the last, a few a second between
    assert "data.root=data/scenes-demo" in started_args(fresh, "first").split()
    fresh.stop("first", force=True)
    wait_until(lambda: not fresh.info("first").active)
    # the next Start finds the data: nothing generated, no progress
    again = Progress()
    views = on_start(*form_values(name="second"), progress=again)
    assert (
        views["train_status"].startswith("Started run 'second'") and "generated" not in views["train_status"]
    )
    assert again.calls == []


def test_without_fashion_mnist_the_procedural_source_is_used_and_said(fresh, monkeypatch):
    import core.data.scenes.ensure as ensure_mod
    from core.data.scenes import SourceMissing

    def missing(source=None):
        raise SourceMissing("no Fashion-MNIST here (test)")

    monkeypatch.setattr(ensure_mod, "find_fashion_mnist", missing)
    views = T.make_handlers(public=True)[0](*form_values(name="shapes"), progress=Progress())
    lines = views["train_status"].split("\n\n")
    assert lines[0].startswith("Started run 'shapes'") and len(lines) == 2
    assert lines[1].startswith("Fashion-MNIST is not installed") and "round, box, pointed" in lines[1]
    assert "data.root=data/scenes-demo-procedural" in started_args(fresh, "shapes").split()


def test_two_starts_at_once_one_runs_the_other_is_told(fresh, monkeypatch):
    import threading

    real_prepare = T.prepare_scenes
    inside, release = threading.Event(), threading.Event()

    def slow_prepare(*args):  # generation that lasts until the test has looked around
        inside.set()
        assert release.wait(30)
        return real_prepare(*args)

    monkeypatch.setattr(T, "prepare_scenes", slow_prepare)
    on_start, _, _, on_tick, _ = T.make_handlers(public=True)
    results = {}
    first = threading.Thread(
        target=lambda: results.update(a=on_start(*form_values(name="a"), progress=Progress()))
    )
    first.start()
    assert inside.wait(30)
    # while the first prepares its data: the device is taken, the Train tab still refreshes
    assert fresh.active().name == "a" and fresh.active().state == "preparing"
    refused = on_start(*form_values(name="b"), progress=Progress())["train_status"]
    assert refused.startswith("⚠️") and "one run per device" in refused and "'a'" in refused
    tick = on_tick(None, None)  # the run has no folder yet: the picker must not name it
    assert "progress" in tick and tick["run_pick"]["value"] is None and tick["run_pick"]["choices"] == []
    release.set()
    first.join(60)
    assert results["a"]["train_status"].startswith("Started run 'a'")
    assert [r.name for r in fresh.list_runs()] == ["a"]  # the refused Start left nothing behind
    assert "data.root=data/scenes-demo" in started_args(fresh, "a").split()


def test_a_failed_preparation_frees_the_device_and_leaves_nothing(fresh, monkeypatch):
    from core.errors import UserError

    def broken(*args):
        raise UserError("data/scenes-demo exists, is not empty and is not a scenes dataset")

    monkeypatch.setattr(T, "prepare_scenes", broken)
    on_start = T.make_handlers(public=True)[0]
    status = on_start(*form_values(name="x"), progress=Progress())["train_status"]
    assert status.startswith("⚠️") and "not a scenes dataset" in status
    assert fresh.active() is None and fresh.list_runs() == [] and not fresh.lock_path.exists()


def wait_until(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_an_older_version_of_the_benchmark_is_moved_aside_redrawn_and_said(fresh, monkeypatch):
    import json

    import core.data.scenes.ensure as ensure_mod
    from core.data.scenes import SourceMissing, generate_dataset, read_meta

    def missing(source=None):
        raise SourceMissing("no Fashion-MNIST here (test)")

    monkeypatch.setattr(ensure_mod, "find_fashion_mnist", missing)
    old = fresh.root / "data" / "scenes-demo-procedural"  # what an older release drew for a Start
    meta = generate_dataset(old, n_train=6, n_val=3, source="procedural")
    (old / "meta.json").write_text(json.dumps(dict(meta, version=meta["version"] - 1)))
    views = T.make_handlers(public=True)[0](*form_values(name="after"), progress=Progress())
    lines = views["train_status"].split("\n\n")
    assert lines[0].startswith("Started run 'after'")
    said = "held an older version of the scenes benchmark: moved to data/scenes-demo-procedural.old-"
    assert said in lines[0]
    assert "generated 9 scenes images into data/scenes-demo-procedural" in lines[0]
    assert read_meta(old)["version"] == ensure_mod.VERSION
    assert len(list(old.parent.glob("scenes-demo-procedural.old-*"))) == 1
