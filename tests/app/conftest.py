"""Fixtures for the app tests (helpers live in tests/app/helpers.py)."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.app.helpers import (
    ROOT,
    FakeBackend,
    copy_finished_runs,
    core_ready,
    free_port,
    make_tiny_checkpoints,
    random_checkpoints,
    shipped_checkpoints,
    start_app,
    stop_app,
)


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """Swap core for the fake in every app module; empty the shared caches around the test."""
    from app import backend, cache, checkpoints

    fake = FakeBackend(tmp_path)
    for name in (
        "read_image",
        "read_meta",
        "load_model",
        "analyze",
        "add_crf",
        "discover",
        "core_available",
        "crf_available",
    ):
        monkeypatch.setattr(backend.BACKEND, name, getattr(fake, name))
    cache.ANALYSES.clear()
    checkpoints.CHECKPOINTS.refresh()
    yield fake
    cache.ANALYSES.clear()


@pytest.fixture
def ids(fake_backend):
    from app.checkpoints import CHECKPOINTS

    return CHECKPOINTS.default("afa"), CHECKPOINTS.default("cnn_cam")


@pytest.fixture
def analysed(fake_backend, ids):
    """A session right after analysing a random 96x128 image."""
    from app.inspect_view import on_image
    from app.state import Session

    image = np.random.default_rng(3).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    views = on_image(image, ids[0], ids[1], False, 0.5, False, Session())
    return views["session"], views


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, tiny_dataset):
    """``python app.py`` on a free port, with the shipped checkpoints (or random ones if none are
    shipped yet), an empty runs folder, and for the Dataset tab the tiny generated dataset with
    tiny checkpoints of its classes (``AFA_TEST_DATASET=FOLDER@SPLIT`` offers another one first,
    e.g. ``assets/datasets/scenes_val@val`` for the README's screenshots).
    Yields ``(url, checkpoint_dir, runs_dir, server_log)``."""
    import time

    reason = core_ready()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("app_server")
    ckpt_dir = ROOT / "checkpoints"
    if not shipped_checkpoints():
        ckpt_dir = base / "checkpoints"
        random_checkpoints(ckpt_dir)
    tiny_ckpts = make_tiny_checkpoints(base / "tiny_checkpoints", tiny_dataset)
    datasets = [os.environ["AFA_TEST_DATASET"]] if os.environ.get("AFA_TEST_DATASET") else []
    runs = base / "runs"
    # so that the Train tab screenshot shows real runs, if there are any
    copy_finished_runs(Path(os.environ.get("AFA_TEST_RUNS_SOURCE", ROOT / "runs")), runs)
    port = free_port()
    env = dict(
        os.environ,
        GRADIO_ANALYTICS_ENABLED="False",
        AFA_APP_CHECKPOINT_DIRS=os.pathsep.join([str(ckpt_dir), str(tiny_ckpts)]),
        AFA_APP_DATASETS=os.pathsep.join([*datasets, f"{tiny_dataset}@val"]),
        AFA_APP_EVAL_CACHE=str(base / "evaluations"),
        AFA_APP_RUNS_DIR=str(runs),
        AFA_TRAIN_DEVICE="cpu",
        GRADIO_TEMP_DIR=str(base / "gradio"),
        PYTHONUNBUFFERED="1",
    )
    proc, url = start_app([str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env,
                          log_path=base / "server.log", port=port, timeout=120)
    started = time.time()
    yield url, ckpt_dir, runs, base / "server.log"
    stop_app(proc)
    print(f"\napp server ran {time.time() - started:.0f} s")


@pytest.fixture(autouse=True)
def quiet_gradio_toasts():
    """gr.Warning / gr.Info outside a request become UserWarnings; the tests check the status text."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="gradio.helpers")
        yield


# ------------------------------------------------------------------------------------------------
# the real core on tiny models and a tiny generated dataset (Dataset tab, export, conversion)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """6 val (and 2 train) procedural scenes of 64x64 in VOC layout, with masks."""
    from core.data.scenes import SceneOptions, generate_dataset

    root = tmp_path_factory.mktemp("app_data") / "scenes"
    opts = SceneOptions(size=64, scale_min=1.0, scale_max=1.5)
    generate_dataset(root, seed=1, n_train=2, n_val=6, opts=opts, source="procedural")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_dataset) -> Path:
    """A folder of two tiny random AFA checkpoints (seeds 0 and 1) of the tiny dataset's classes."""
    return make_tiny_checkpoints(tmp_path_factory.mktemp("app_ckpts"), tiny_dataset)


@pytest.fixture
def real_env(tmp_path, monkeypatch, tiny_dataset, tiny_checkpoints):
    """The app on the real core: the tiny checkpoints, the tiny dataset (and the bundled ones),
    an empty runs folder and an evaluation cache of its own; shared caches emptied."""
    from app import cache, checkpoints, dataset_view, evaluations

    monkeypatch.setenv("AFA_APP_CHECKPOINT_DIRS", str(tiny_checkpoints))
    monkeypatch.setenv("AFA_APP_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("AFA_APP_DATASETS", f"{tiny_dataset}@val")
    monkeypatch.setenv("AFA_APP_EVAL_CACHE", str(tmp_path / "evaluations"))
    monkeypatch.setitem(dataset_view.PUBLIC, "mode", False)
    cache.ANALYSES.clear()
    evaluations.EVALUATIONS.clear_memory()
    checkpoints.CHECKPOINTS.refresh()
    yield tmp_path
    cache.ANALYSES.clear()
    evaluations.EVALUATIONS.clear_memory()
