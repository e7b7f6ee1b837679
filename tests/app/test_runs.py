"""The run manager, driving a fake trainer that writes the real run-folder format."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from app.runs import RunError, RunManager, pid_alive, read_metrics

FAKE = [sys.executable, str(Path(__file__).with_name("fake_trainer.py"))]


def wait_for(predicate, timeout=15.0, every=0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def manager(tmp_path):
    m = RunManager(root=tmp_path, runs_dir=tmp_path / "runs", trainer=FAKE, config="fake.yaml", device="cpu")
    yield m
    for run in m.list_runs():  # never leave a trainer behind
        if run.pid and pid_alive(run.pid):
            os.kill(run.pid, signal.SIGKILL)


def test_start_refuse_second_stop_and_resume(manager, tmp_path):
    info = manager.start("a", ["train.max_iters=400"])
    assert info.state in ("starting", "running")
    wait_for(lambda: manager.info("a").step >= 2)
    assert manager.info("a").state == "running"
    assert manager.active().name == "a"

    with pytest.raises(RunError, match="already training"):
        manager.start("b", ["train.max_iters=5"])
    other_process = RunManager(root=tmp_path, runs_dir=tmp_path / "runs", trainer=FAKE, device="cpu")
    with pytest.raises(RunError, match="one run per device"):
        other_process.start("c", [])
    with pytest.raises(RunError, match="still running"):
        manager.resume("a")

    assert "Stopping" in manager.stop("a")
    stopped = wait_for(lambda: manager.info("a").state == "stopped" and manager.info("a"))
    assert stopped.can_resume and stopped.has_checkpoint
    assert manager.active() is None and not manager.lock_path.exists()
    step = stopped.step

    manager.resume("a")
    wait_for(lambda: manager.info("a").step > step + 1)
    assert manager.info("a").state == "running"
    manager.stop("a")
    wait_for(lambda: manager.info("a").state == "stopped")
    log = manager.log_tail("a")
    assert log.count("fake trainer pid") == 2 and "--resume" in log


def test_dead_process_is_detected_and_frees_the_device(manager):
    manager.start("crash", ["train.max_iters=100", "fake.die_after=3"])
    dead = wait_for(lambda: manager.info("crash").state == "dead" and manager.info("crash"))
    assert "gone" in dead.message and "train.log" in dead.message
    assert not manager.lock_path.exists()
    manager.start("next", ["train.max_iters=2"])  # the device is free again
    wait_for(lambda: manager.info("next").state == "finished")


def test_dead_process_seen_by_a_fresh_manager(manager, tmp_path):
    """After an app restart there is no Popen object: the pid check alone must notice."""
    manager.start("orphan", ["train.max_iters=1000"])
    pid = wait_for(lambda: manager.info("orphan").status.get("pid"))
    os.kill(pid, signal.SIGKILL)
    fresh = RunManager(root=tmp_path, runs_dir=tmp_path / "runs", trainer=FAKE, device="cpu")
    assert wait_for(lambda: fresh.info("orphan").state == "dead")
    manager.info("orphan")  # reap


def test_finished_run_metrics_samples(manager):
    manager.start("short", ["train.max_iters=10", "fake.step_time=0.01"])
    done = wait_for(lambda: manager.info("short").state == "finished" and manager.info("short"))
    assert done.step == 10 and done.progress == 1.0
    assert done.last_loss == pytest.approx(0.1)
    assert done.best_miou == ("seg_label", pytest.approx(1.0))  # the segmentation's, not the higher CAM's
    assert not done.can_resume  # finished
    records = manager.metrics("short")
    assert sum(r["kind"] == "eval" for r in records) == 2
    samples = manager.samples("short")
    assert samples["image"].shape == (2, 32, 32, 3) and "par_label" in samples
    with pytest.raises(RunError, match="has finished"):
        manager.resume("short")
    with pytest.raises(RunError, match="exists already"):
        manager.start("short", [])
    assert [r.name for r in manager.list_runs()] == ["short"]


def test_bad_names_and_missing_runs(manager):
    for name in ("../evil", "", "a/b", "x" * 65, ".hidden"):
        with pytest.raises(RunError, match="run name"):
            manager.start(name, [])
    with pytest.raises(RunError):
        manager.resume("nope")
    assert "not running" in manager.stop("nope")


def test_trainer_that_cannot_start(tmp_path):
    m = RunManager(
        root=tmp_path, runs_dir=tmp_path / "runs", trainer=[sys.executable, "-c", "raise SystemExit(2)"]
    )
    m.start("bad", [])
    info = wait_for(lambda: m.info("bad").state == "failed" and m.info("bad"))
    assert "before writing its status" in info.message
    assert not m.lock_path.exists()


def test_stale_lock_is_ignored(manager):
    manager.runs_dir.mkdir(parents=True)
    manager.lock_path.write_text('{"run": "ghost", "pid": 999999999}')
    info = manager.start("fresh", ["train.max_iters=2"])  # would raise "already training" if honoured
    assert info.name == "fresh" and info.state in ("starting", "running")
    assert wait_for(lambda: manager.info("fresh").state == "finished")
    assert not manager.lock_path.exists()  # released by the run, not left to the ghost


def test_resume_only_where_core_can(manager):
    """A run that saved no training state (only its JSON copy) cannot be resumed: core.train refuses."""
    run = manager.runs_dir / "nostate"
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"state": "stopped", "step": 3, "max_iters": 10}')
    (run / "train_state.json").write_text('{"step": 3}')
    assert manager.info("nostate").state == "stopped" and not manager.info("nostate").can_resume
    with pytest.raises(RunError, match="no training state"):
        manager.resume("nostate")


def test_read_metrics_skips_partial_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "st')
    assert read_metrics(path) == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert read_metrics(tmp_path / "missing.jsonl") == []


@pytest.mark.slow
def test_real_trainer_start_stop_resume_open(tmp_path, monkeypatch):
    """The app's command line against the real ``core.train`` on a tiny procedural dataset."""
    import subprocess

    from tests.app.helpers import ROOT, core_ready

    reason = core_ready()
    if reason:
        pytest.skip(reason)
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "core.data.scenes",
            "--out",
            str(data),
            "--source",
            "procedural",
            "--train",
            "8",
            "--val",
            "4",
            "--size",
            "64",
            "--scale-min",
            "1",
            "--scale-max",
            "1.5",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    runs = tmp_path / "runs"
    monkeypatch.setenv("AFA_APP_RUNS_DIR", str(runs))
    from app import train_view as T

    manager = RunManager(runs_dir=runs, config="core/configs/tiny.yaml", device="cpu")
    monkeypatch.setattr(T, "MANAGER", manager)
    overrides = [f"data.root={data}", "train.max_iters=200", "train.log_every=1", "train.save_every=0"]
    try:
        manager.start("tiny", overrides)
        wait_for(lambda: manager.info("tiny").step >= 2, timeout=180, every=0.5)
        manager.stop("tiny")
        first = wait_for(
            lambda: manager.info("tiny").state == "stopped" and manager.info("tiny"), timeout=120
        )
        assert first.can_resume and first.has_checkpoint
        manager.resume("tiny")
        wait_for(lambda: manager.info("tiny").step > first.step, timeout=180, every=0.5)
        manager.stop("tiny")
        wait_for(lambda: manager.info("tiny").state == "stopped", timeout=120)
    finally:
        info = manager.info("tiny")
        if info.pid and pid_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
    print(f"\nreal trainer: stopped at step {first.step}, resumed, stopped at {manager.info('tiny').step}")
    assert manager.metrics("tiny") and manager.samples("tiny")["image"].ndim == 4
    grid, legend = T.samples_view("tiny")
    assert grid is not None and "Classes" in legend
    opened = T.on_open_in_inspect("tiny")
    assert opened["afa_ckpt"]["value"].endswith("tiny/checkpoint.safetensors"), opened
    assert "tabs" in opened  # switches to the Inspect tab


def test_a_start_preparing_its_data_holds_the_device_while_its_app_lives(manager):
    import json
    import subprocess

    manager.runs_dir.mkdir(parents=True, exist_ok=True)

    def lock(owner):
        lock = {"run": "ghost", "pid": None, "owner": owner, "device": "cpu", "started": time.time()}
        manager.lock_path.write_text(json.dumps(lock))

    lock(os.getpid())  # this process is preparing "ghost"'s data
    assert manager.active().name == "ghost" and manager.active().state == "preparing"
    with pytest.raises(RunError, match="being prepared.*one run per device"):
        manager.start("b", ["train.max_iters=3"])
    assert manager.lock_path.exists()  # reading the state never drops a live lock
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock(gone.pid)  # an app that died while preparing: its lock is stale
    assert manager.active() is None and not manager.lock_path.exists()
    assert manager.start("b", ["train.max_iters=3"]).state in ("starting", "running", "finished")
