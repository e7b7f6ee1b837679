"""Shared fixtures of the training tests: one tiny procedural scenes dataset per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "core" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory) -> Path:
    """8 train + 4 val procedural scenes of 64x64 (no Fashion-MNIST needed)."""
    from core.data.scenes import SceneOptions, generate_dataset

    root = tmp_path_factory.mktemp("tiny_scenes")
    opts = SceneOptions(size=64, scale_min=1.0, scale_max=1.5)
    generate_dataset(root, seed=0, n_train=8, n_val=4, opts=opts, source="procedural")
    return root


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: the repo importable, one thread each (2 CPU cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
