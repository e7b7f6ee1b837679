"""ZeroGPU: the analysis on the GPU a Hugging Face Space grants, through the ``spaces`` package.

On a Space with ZeroGPU hardware, CUDA exists only inside functions decorated with
``spaces.GPU``: each call asks for a GPU, runs the function in a worker process that holds it,
and sends the result back (arguments and result are pickled). So when ``SPACE_ID`` is set and
``spaces`` can be imported, ``BACKEND.analyze`` runs ``core.analyze`` through that decorator, with
the model loaded on the CPU and moved to the granted GPU inside the call. When no GPU is granted
(the queue or the visitor's quota says no, the worker fails to start) the same analysis runs on
the CPU, and the log says why. On hardware without ZeroGPU the package's decorator returns the
function unchanged, and the function uses CUDA if the Space has a GPU. Without ``SPACE_ID`` or
without the package nothing here is used: the app runs exactly as before.

ZeroGPU looks for decorated functions when the app starts, so the decorated function is made at
import (``RUNNER``), not on the first analysis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import UserError, one_line

log = logging.getLogger("afa_app")

# the GPU time asked for one analysis (ZeroGPU schedules by it; an analysis takes a few seconds)
GPU_SECONDS = int(os.environ.get("AFA_APP_GPU_SECONDS", "60"))


def spaces_gpu() -> Callable | None:
    """``spaces.GPU`` when the app runs on a Space (``SPACE_ID``) that has the ``spaces`` package."""
    if not os.environ.get("SPACE_ID"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return getattr(spaces, "GPU", None)


@dataclass
class Raised:
    """An exception of the analysis itself, carried back out of the GPU worker as a value (the
    package would turn it into a generic error and lose its type, and with it the user's message)."""

    exc: BaseException


def granted_device():
    """The GPU this process holds (inside ``spaces.GPU``), or None."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else None


def analyze_on_granted_gpu(model: Any, image: Any, labels: Any, crf: bool, **options: Any) -> Any:
    """``core.analyze`` on the granted GPU; runs inside ``spaces.GPU`` (on ZeroGPU: in its worker).
    ``options``: further ``core.analyze`` arguments (``dense``, ``precision``)."""
    import core

    try:
        device = granted_device()
        if device is not None:
            model = model.to(device)
        return core.analyze(model, image, labels=labels, crf=crf, **options)
    except Exception as exc:  # noqa: BLE001 - returned, re-raised as itself by GpuRunner.analyze
        if not isinstance(exc, UserError):
            log.exception("analysis failed on the GPU worker")
        return Raised(exc)


class GpuRunner:
    """Runs analyses through ``gpu`` (the ``spaces.GPU`` decorator), on the CPU when none is granted."""

    def __init__(self, gpu: Callable):
        self.call = gpu(duration=GPU_SECONDS)(analyze_on_granted_gpu)

    def analyze(
        self, model: Any, image: Any, labels: Any, crf: bool, on_cpu: Callable[[], Any], **options: Any
    ) -> Any:
        try:
            result = self.call(model, image, labels, crf, **options)
        except Exception as exc:  # noqa: BLE001 - only the GPU machinery raises here (see Raised)
            log.warning("no GPU granted for this analysis (%s); running it on the CPU", one_line(exc))
            return on_cpu()
        if isinstance(result, Raised):
            raise result.exc
        return result


def make_runner() -> GpuRunner | None:
    gpu = spaces_gpu()
    return GpuRunner(gpu) if gpu is not None else None
