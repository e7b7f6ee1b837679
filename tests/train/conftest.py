"""Shared helpers of the training tests (the tiny scenes dataset is in tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "core" / "configs" / "tiny.yaml"


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: the repo importable, one thread each (2 CPU cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
