"""Checkpoints: safetensors weights plus JSON metadata; atomic writes; never unpickle."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from core.errors import UserError, existing_file

FORMAT_VERSION = 1
META_KEY = "afa_explorer"


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message says why in one sentence."""


# atomic_write's temporary files: ".NAME." + mkstemp's 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` then rename, so a crash leaves the old file intact
    (a kill -9 can leave the hidden temporary file behind: see ``remove_stale_temp_files``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted ``atomic_write`` calls under ``folder`` (e.g. a
    run folder after a kill -9 during a save); return them. Only call it when nothing else is
    writing there (at the start or resume of a run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file() and _TEMP_NAME.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """Save weights (optionally cast floating tensors to ``dtype``, e.g. fp16 to stay small) + meta."""
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    full_meta = {"format": FORMAT_VERSION, **meta}
    header = {META_KEY: json.dumps(full_meta, default=_json_default)}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its weights."""
    path = _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a safetensors checkpoint ({exc})") from exc
    if META_KEY not in header:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not an AFA Explorer checkpoint (no '{META_KEY}' "
            "metadata); convert the authors' .pth files with `python -m core.convert official-afa`"
        )
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} has damaged metadata ({exc})") from exc
    if not isinstance(meta, dict) or "model" not in meta or "classes" not in meta:
        raise CheckpointError(f"{path.name} metadata lacks the model config or the class names")
    if meta.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path.name} was written by a newer version (format {meta['format']})")
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights (as stored) and metadata."""
    meta = read_meta(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{Path(path).name} could not be read ({exc})") from exc
    return state, meta


def _check_file(path: str | Path) -> Path:
    path = existing_file(path, CheckpointError, "checkpoint", " (pass a .safetensors checkpoint file)")
    if path.suffix == ".pth" or path.suffix == ".pt":
        raise CheckpointError(
            f"{path.name} is a PyTorch pickle; AFA Explorer only opens .safetensors checkpoints "
            "(convert the authors' files with "
            "`python -m core.convert official-afa IN.pth OUT --backbone mit_bX`)"
        )
    return path
