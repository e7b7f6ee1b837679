"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory) -> Path:
    """8 train + 4 val procedural scenes of 64x64 (no Fashion-MNIST needed)."""
    from core.data.scenes import SceneOptions, generate_dataset

    root = tmp_path_factory.mktemp("tiny_scenes")
    opts = SceneOptions(size=64, scale_min=1.0, scale_max=1.5)
    generate_dataset(root, seed=0, n_train=8, n_val=4, opts=opts, source="procedural")
    return root
