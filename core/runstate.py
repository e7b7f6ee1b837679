"""Everything a run folder holds besides metrics: training state for exact resume, the model
checkpoint the app loads, and ``status.json``. Safetensors and JSON only; every write is atomic.

``train_state.safetensors`` is self-contained: model weights (``model.*``), AdamW moments
(``optim.<param index>.<name>``), the torch RNG states of every rank (``rng.<rank>.torch``,
``rng.<rank>.cuda.<device>``) and, in its metadata, the JSON part (step, data position, optimiser
groups and scalars, GradScaler, NumPy / Python RNG states). ``train_state.json`` is a readable
copy of that JSON. Resume trusts only ``train_state.safetensors``: one file replaced atomically
cannot disagree with itself, whatever happens between the writes of the other files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from core.checkpoint import atomic_write, atomic_write_json, read_meta, save_checkpoint
from core.errors import UserError

STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"  # the resolved config of the run
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples/latest.npz"  # the latest training batch and its label maps
STATE_META_KEY = "train_state"
STATE_FORMAT = 1


# ---------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as JSON-serialisable values (torch states as lists of bytes)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (e.g. evaluation) without changing any RNG stream of training."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- training state
@dataclass
class TrainState:
    step: int  # completed iterations
    epoch: int
    position: int  # batches of ``epoch`` already consumed
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # ready for ``optimizer.load_state_dict``
    scaler: dict[str, Any] | None
    rng: list[dict[str, Any]]  # one per rank, as ``capture_rng`` returns
    meta: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def save_train_state(run_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     step: int, epoch: int, position: int, rng: list[dict[str, Any]],
                     scaler_state: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``train_state.safetensors`` (then its JSON copy). ``rng``: every rank's ``capture_rng()``."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().cpu().clone().contiguous()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    rng_json = []
    for rank, state in enumerate(rng):
        tensors[f"rng.{rank}.torch"] = torch.tensor(state["torch"], dtype=torch.uint8)
        for i, cuda_state in enumerate(state.get("cuda") or []):
            tensors[f"rng.{rank}.cuda.{i}"] = torch.tensor(cuda_state, dtype=torch.uint8)
        rng_json.append({"numpy": state["numpy"], "python": state["python"],
                         "cuda_devices": len(state.get("cuda") or [])})
    info = {
        "format": STATE_FORMAT,
        "step": int(step),
        "data": {"epoch": int(epoch), "position": int(position)},
        "optimizer": {"param_groups": [{k: _plain(v) for k, v in g.items()} for g in opt["param_groups"]],
                      "scalars": scalars},
        "scaler": scaler_state,
        "rng": rng_json,
        "world_size": len(rng),
        "written": time.time(),
        **(extra or {}),
    }
    header = {STATE_META_KEY: json.dumps(info)}
    path = atomic_write(run_dir / STATE_FILE, lambda p: save_file(tensors, str(p), metadata=header))
    atomic_write_json(run_dir / STATE_JSON, {k: v for k, v in info.items() if k != "rng"})
    return path


def read_train_state_info(run_dir: str | Path) -> dict[str, Any]:
    """The JSON part of a run folder's ``train_state.safetensors``, checked without loading the
    tensors (safetensors also checks that the file is complete). ``UserError`` when it is missing,
    damaged or from a newer version: resuming cannot go on from it."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"cannot resume {run_dir}: it holds no {STATE_FILE} (is it a run folder?)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        info = json.loads(header[STATE_META_KEY])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot resume {run_dir}: {STATE_FILE} is damaged (truncated or not written by "
                        "core.train); restore it from a copy or start a new run") from exc
    if not isinstance(info, dict) or info.get("format", 0) > STATE_FORMAT:
        raise UserError(f"cannot resume {run_dir}: {STATE_FILE} was written by a newer version of this "
                        "project")
    return info


def load_train_state(run_dir: str | Path) -> TrainState:
    """Read ``train_state.safetensors`` of a run folder (``UserError`` when it is missing or damaged)."""
    path = Path(run_dir) / STATE_FILE
    info = read_train_state_info(run_dir)
    tensors = load_file(str(path))
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, entry in info["optimizer"]["scalars"].items():
        opt_state.setdefault(int(index), {}).update(entry)
    groups = []
    for g in info["optimizer"]["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    rng = []
    for rank, entry in enumerate(info["rng"]):
        rng.append({
            "torch": tensors[f"rng.{rank}.torch"].tolist(),
            "cuda": [tensors[f"rng.{rank}.cuda.{i}"].tolist() for i in range(entry.get("cuda_devices", 0))],
            "numpy": entry["numpy"],
            "python": entry["python"],
        })
    return TrainState(step=int(info["step"]), epoch=int(info["data"]["epoch"]),
                      position=int(info["data"]["position"]), model=model_state,
                      optimizer={"state": opt_state, "param_groups": groups}, scaler=info.get("scaler"),
                      rng=rng, meta=info)


# ---------------------------------------------------------------- model checkpoint and status
def checkpoint_meta(model: torch.nn.Module, cfg: dict, step: int, metrics: dict | None) -> dict[str, Any]:
    """The metadata ``core.load_model`` needs, plus provenance (step, data, full config)."""
    def floats(x: Any) -> list[float]:
        if isinstance(x, torch.Tensor):
            x = x.flatten().tolist()
        return [float(v) for v in x]

    return {
        "model": cfg["model"],
        "classes": list(getattr(model, "classes", [])),
        "mean": floats(getattr(model, "mean", cfg["data"]["mean"])),
        "std": floats(getattr(model, "std", cfg["data"]["std"])),
        "step": int(step),
        "data": {"name": cfg["data"]["name"], "root": str(cfg["data"]["root"]),
                 "split": cfg["data"]["train_split"], **getattr(model, "data_provenance", {})},
        "metrics": metrics or {},
        "config": cfg,
    }


def save_model_checkpoint(path: str | Path, model: torch.nn.Module, cfg: dict, step: int,
                          metrics: dict | None = None) -> Path:
    return save_checkpoint(path, model.state_dict(), checkpoint_meta(model, cfg, step, metrics))


def checkpoint_step(path: str | Path) -> int | None:
    """The step recorded in a checkpoint, or None when it is missing or unreadable."""
    try:
        return int(read_meta(path).get("step", -1))
    except (ValueError, OSError):
        return None


def write_status(run_dir: str | Path, state: str, step: int, max_iters: int, message: str = "") -> None:
    """``status.json``: state is running | finished | stopped | failed; ``updated`` in Unix seconds."""
    atomic_write_json(Path(run_dir) / STATUS_FILE, {
        "state": state, "step": int(step), "max_iters": int(max_iters), "pid": os.getpid(),
        "message": message, "updated": time.time(),
    })


def can_resume(run_dir: str | Path) -> bool:
    """Whether ``python -m core.train --resume run_dir`` can continue the run: its training state
    passes ``read_train_state_info``, the check ``core.train`` makes (the app's Resume asks here)."""
    try:
        read_train_state_info(run_dir)
    except UserError:
        return False
    return True
