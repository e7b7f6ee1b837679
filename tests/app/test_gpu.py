"""ZeroGPU (app/gpu.py): with SPACE_ID set and the ``spaces`` package importable, analyses run
through ``spaces.GPU``; without a granted GPU, or without the package, they run on the CPU. The
package is replaced by a stand-in module that behaves like its ZeroGPU worker: arguments and
result cross a process boundary (pickled), and the scheduler may refuse a GPU."""

from __future__ import annotations

import logging
import pickle
import sys
import types

import numpy as np
import pytest

from app import gpu
from app.backend import CoreBackend
from core.errors import UserError
from tests.app.helpers import random_checkpoints

FIELDS = ("scores", "cam", "cam_label", "par_label", "affinity", "mhsa", "rw_afa_label", "seg_label")


class QuotaExceeded(Exception):
    """What the package raises when it grants no GPU (it is a gradio Error there)."""


def stand_in(refuse: bool = False) -> types.ModuleType:
    """A ``spaces`` module: ``GPU(duration=...)`` decorates a function whose call "crosses into the
    worker" (pickle both ways) unless ``refuse``, where the scheduler says no."""
    module = types.ModuleType("spaces")
    module.calls = []

    def GPU(task=None, *, duration=None, size=None):  # noqa: N802 - the package's name
        def decorate(fn):
            def scheduled(*args, **kwargs):
                module.calls.append({"function": fn.__name__, "duration": duration})
                if refuse:
                    raise QuotaExceeded("ZeroGPU quota exceeded: no GPU for this request")
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                return pickle.loads(pickle.dumps(fn(*args, **kwargs)))

            return scheduled

        return decorate(task) if task is not None else decorate

    module.GPU = GPU
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_ckpt")
    random_checkpoints(folder)
    return next(folder.glob("afa_*.safetensors"))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def on_cpu(checkpoint, image):
    """The analysis as the app computes it off Spaces: the reference every path must equal."""
    backend = CoreBackend()
    model = backend.load_model(checkpoint)
    return backend.analyze(model, image, ["tshirt", "bag"], False)


def assert_same(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x is not None and np.array_equal(x, y), name


def on_space(monkeypatch, module):
    monkeypatch.setenv("SPACE_ID", "someone/afa-explorer")
    if module is None:
        monkeypatch.setitem(sys.modules, "spaces", None)  # "import spaces" raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "spaces", module)


def test_the_decorator_is_used_only_on_a_space_with_the_package(monkeypatch):
    module = stand_in()
    monkeypatch.setitem(sys.modules, "spaces", module)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert gpu.make_runner() is None  # not a Space: nothing changes
    on_space(monkeypatch, None)
    assert gpu.make_runner() is None  # a Space without the package: nothing changes
    on_space(monkeypatch, module)
    runner = gpu.make_runner()
    assert runner is not None and module.calls == []  # decorated at start, nothing run yet


def test_analysis_runs_through_spaces_gpu(monkeypatch, checkpoint, image, on_cpu):
    module = stand_in()
    on_space(monkeypatch, module)
    backend = CoreBackend(gpu=gpu.make_runner())
    model = backend.load_model(checkpoint)
    assert next(model.parameters()).device.type == "cpu"  # kept on the CPU; moved inside the GPU call
    result = backend.analyze(model, image, ["tshirt", "bag"], False)
    assert module.calls == [{"function": "analyze_on_granted_gpu", "duration": gpu.GPU_SECONDS}]
    assert_same(result, on_cpu)  # the result came back whole through the worker boundary


def test_no_gpu_granted_falls_back_to_the_cpu(monkeypatch, checkpoint, image, on_cpu, caplog):
    module = stand_in(refuse=True)
    on_space(monkeypatch, module)
    backend = CoreBackend(gpu=gpu.make_runner())
    with caplog.at_level(logging.WARNING, logger="afa_app"):
        result = backend.analyze(backend.load_model(checkpoint), image, ["tshirt", "bag"], False)
    assert len(module.calls) == 1  # asked for a GPU, was refused...
    assert_same(result, on_cpu)  # ...and analysed on the CPU instead
    assert any("no GPU granted" in r.getMessage() and "quota" in r.getMessage() for r in caplog.records)


def test_the_analysis_own_errors_are_not_retried_and_keep_their_type(monkeypatch, checkpoint, image):
    module = stand_in()
    on_space(monkeypatch, module)
    backend = CoreBackend(gpu=gpu.make_runner())
    model = backend.load_model(checkpoint)
    cpu_calls = []
    with pytest.raises(UserError, match="unknown class 'unicorn'"):
        backend.gpu.analyze(model, image, ["unicorn"], False, on_cpu=lambda: cpu_calls.append(1))
    assert len(module.calls) == 1 and cpu_calls == []


def test_the_model_goes_to_the_granted_device(monkeypatch, checkpoint, image):
    import torch

    moved = []
    real_to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(gpu, "granted_device", lambda: torch.device("cpu"))  # stands for the GPU
    model = CoreBackend().load_model(checkpoint)
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    gpu.analyze_on_granted_gpu(model, image, ["tshirt"], False)
    assert moved[:1] == [torch.device("cpu")]
    moved.clear()
    monkeypatch.setattr(gpu, "granted_device", lambda: None)  # no GPU in this worker: left as it is
    gpu.analyze_on_granted_gpu(model, image, ["tshirt"], False)
    assert moved == []
