"""A fresh Space, simulated: a clean ``git clone`` of the repository these tests run from (only
committed files: no data/, no runs/), and ``python app.py`` started in it with ``SPACE_ID`` set,
as Hugging Face Spaces starts it. Public training is capped further by the app's environment
settings so that a test trains a few steps on a few generated images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.app.helpers import ROOT, core_ready, free_port, start_app, stop_app

# what the app server of a test must not inherit from the developer's or CI's environment
APP_SETTINGS = ("AFA_APP_CHECKPOINT_DIRS", "AFA_APP_RUNS_DIR", "AFA_TRAIN_DEVICE", "PYTHONPATH")


def clone_repository(target: Path) -> Path:
    """``git clone`` of the checkout these tests run from (its committed HEAD)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    probe = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, capture_output=True)
    assert not (target / "data").exists() and not (target / "runs").exists()
    return target


@contextmanager
def fresh_space(base: Path, public_scenes: str, public_iters: int = 3):
    """Yields ``(url, clone)`` of the app running in a fresh clone with ``SPACE_ID`` set."""
    reason = core_ready()
    if reason:
        pytest.skip(reason)
    clone = clone_repository(base / "space")
    env = {k: v for k, v in os.environ.items() if k not in APP_SETTINGS}
    env.update(
        SPACE_ID="afa-tests/fresh-space",
        AFA_APP_PUBLIC_SCENES=public_scenes,
        AFA_APP_PUBLIC_ITERS=str(public_iters),
        AFA_APP_WARM="0",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(base / "gradio"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    proc = None
    try:
        # --host: a Space listens on 0.0.0.0; a test stays on the loopback interface
        proc, url = start_app(["app.py", "--port", str(port), "--host", "127.0.0.1"], cwd=clone, env=env,
                              log_path=base / "space.log", port=port, timeout=180)
        yield url, clone
    finally:
        if proc is not None:
            stop_app(proc)
        kill_trainers(clone / "runs")


def kill_trainers(runs: Path) -> None:
    """No trainer outlives its test (a run that did not finish in time)."""
    for status in runs.glob("*/status.json"):
        try:
            pid = int(json.loads(status.read_text()).get("pid") or 0)
            if pid > 0:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def run_state(clone: Path, name: str) -> str:
    try:
        return json.loads((clone / "runs" / name / "status.json").read_text()).get("state", "")
    except (OSError, ValueError):
        return ""


def wait_for_run(clone: Path, name: str, timeout: float = 600.0) -> str:
    """The run's final state (finished / stopped / failed), read from its folder."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = run_state(clone, name)
        if state in ("finished", "stopped", "failed"):
            return state
        time.sleep(1.0)
    log = clone / "runs" / name / "train.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise AssertionError(f"run {name} not done in {timeout:.0f} s: {tail}")
