"""``core.load_model``: a checkpoint of this project -> a model ready for inference."""

from __future__ import annotations

from pathlib import Path

import torch

from core.checkpoint import CheckpointError, load_checkpoint


def best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(path: str | Path, device: str | torch.device | None = None):
    """Load a ``.safetensors`` checkpoint (weights + JSON metadata) and return an ``AFANet`` in
    eval mode on ``device`` (default: CUDA if available, else CPU). Never unpickles anything."""
    from core.models.registry import create_model

    state, meta = load_checkpoint(path)
    model_cfg = dict(meta["model"])
    model_cfg["pretrained"] = None  # the checkpoint holds every weight
    try:
        data = {k: meta[k] for k in ("mean", "std") if meta.get(k)}  # older files: the defaults
        model = create_model({"model": model_cfg, "data": data}, classes=meta["classes"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{Path(path).name} describes a model this version cannot build ({exc})"
        ) from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} weights of the wrong shape (e.g. {wrong[0]})")
        raise CheckpointError(f"{Path(path).name} does not fit its model config: " + "; ".join(parts))
    model.load_state_dict(state)
    model.meta = {**meta, "path": str(path)}
    return model.to(device or best_device()).eval()
