"""Encoder registry and the weight-loading helpers shared by every encoder family.

An encoder is created by name (``create_encoder("mit_b1")``); each family module (``mit``, ``vit``,
``cnn``) registers its factories with :func:`register_encoder`. Every factory has the signature
``factory(strides=(4, 2, 2, 1), drop_path_rate=0.1, pretrained=None) -> nn.Module``.

``pretrained`` is ``None`` (random init), a path or state dict, or ``"hub"``: download the
ImageNet weights from the Hugging Face hub with :func:`download_pretrained`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.checkpoint import CheckpointError
from core.config import ConfigError
from core.errors import UserError, existing_file

EncoderFactory = Callable[..., nn.Module]

ENCODERS: dict[str, EncoderFactory] = {}

# How many key names an error message shows before it says "and N more".
_MAX_NAMES_IN_ERROR = 3


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator that adds an encoder factory to :data:`ENCODERS` under ``name``."""

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in ENCODERS and ENCODERS[name] is not factory:
            raise ValueError(f"an encoder named {name!r} is already registered")
        ENCODERS[name] = factory
        return factory

    return decorator


def create_encoder(
    name: str,
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path_rate: float = 0.1,
    pretrained: str | os.PathLike | Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """Build the encoder registered as ``name``.

    ``strides`` only matters for MiT; ViT and ResNet have a fixed output stride of 16.
    """
    if name not in ENCODERS:
        valid = ", ".join(sorted(ENCODERS))
        raise ConfigError(f"unknown encoder {name!r}; valid names are: {valid} (model.backbone)")
    if isinstance(pretrained, str) and not pretrained.strip():
        pretrained = None  # an empty config value means "no weights", not the current directory
    return ENCODERS[name](strides=tuple(strides), drop_path_rate=drop_path_rate, pretrained=pretrained)


def is_hub_request(pretrained: object) -> bool:
    """True when ``pretrained`` asks for a download from the Hugging Face hub."""
    return isinstance(pretrained, str) and pretrained.strip().lower() == "hub"


def download_pretrained(
    repo_id: str, filenames: Sequence[str] = ("model.safetensors", "pytorch_model.bin")
) -> str:
    """Download the first of ``filenames`` that exists in the hub repository ``repo_id``.

    Returns the local path. Any failure (package missing, no network, no such file) is a
    ``UserError`` with one sentence that tells the user how to proceed offline.
    """
    advice = "download the file elsewhere and pass its path as model.pretrained"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError(
            f"could not download {repo_id}: huggingface_hub is not installed; {advice}"
        ) from None

    reason = "no network"
    for filename in filenames:
        try:
            return hf_hub_download(repo_id=repo_id, filename=filename)
        except Exception as err:  # every hub failure ends in the same advice
            # A missing file is worth trying the next name for; anything else (offline, refused)
            # would fail the same way for every name. Matched by name: the error classes moved
            # between huggingface_hub versions, and offline it raises LocalEntryNotFoundError.
            kind = type(err).__name__
            if kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
                reason = f"none of {', '.join(filenames)} exists there"
                continue
            if kind in ("RepositoryNotFoundError", "GatedRepoError"):
                reason = "the repository does not exist or needs a login"
            else:
                reason = "no network"
            break
    raise UserError(f"could not download {repo_id}: {reason}; {advice}")


def _unwrap_checkpoint(obj: Any) -> Any:
    """Dig the state dict out of common checkpoint wrappers ({"state_dict": ...}, {"model": ...})."""
    for _ in range(3):
        if not isinstance(obj, Mapping) or any(isinstance(v, Tensor) for v in obj.values()):
            return obj
        inner = next(
            (obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            return obj
        obj = inner
    return obj


_PRETRAINED_FIX = 'set model.pretrained to an existing weights file, "hub" or null'


def load_weights_file(path: str | os.PathLike, fix: str = _PRETRAINED_FIX) -> Any:
    """The object stored in a ``.safetensors`` or PyTorch (``.pth``/``.bin``) weights file.

    PyTorch files are read with ``weights_only=True``: no pickled code is ever executed. Any file
    that cannot be read this way is a ``CheckpointError`` that says why and, with ``fix``, what
    to do (never torch's advice to retry with ``weights_only=False``, which would run the pickle).
    """
    path = existing_file(Path(path).expanduser(), CheckpointError, "weights file", f" ({fix})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not a weights file"
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:  # a pickle of Python objects: refused, never run
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors (e.g. {found.group(1)}), which are "
                "never loaded, for safety; save a plain state dict (torch.save(model.state_dict(), ...))"
            ) from None
        raise CheckpointError(
            f"could not read weights from {path}: it is not a readable PyTorch or safetensors weights "
            f"file (damaged, truncated or another kind of file); {fix}"
        ) from None


def read_state_dict(
    source: str | os.PathLike | Mapping[str, Tensor], fix: str = _PRETRAINED_FIX
) -> dict[str, Tensor]:
    """Read weights from a state dict, a ``.safetensors`` file or a PyTorch file (``.pth``/``.bin``)
    (see :func:`load_weights_file`). A file without tensors is a ``CheckpointError``."""
    if isinstance(source, Mapping):
        obj: Any = source
        where = "the given state dict"
    else:
        where = str(Path(source).expanduser())
        obj = load_weights_file(source, fix)
    obj = _unwrap_checkpoint(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"could not read weights from {where}: it holds a {type(obj).__name__}, not a state dict"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"could not read weights from {where}: it contains no tensors")
    return state


def _some(names: Sequence[str]) -> str:
    """'a, b, c and 4 more' for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    rest = len(names) - _MAX_NAMES_IN_ERROR
    return f"{shown} and {rest} more" if rest > 0 else shown


def load_checked_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` strictly, with one readable sentence on any mismatch.

    ``what`` names the weights in the message (e.g. "mit_b1"). BatchNorm's ``num_batches_tracked``
    counters may be absent (older checkpoints never stored them).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
        raise CheckpointError(f"the weights do not fit {what}: {' and '.join(parts)}")
    wrong = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        first = wrong[0]
        raise CheckpointError(
            f"the weights do not fit {what}: {len(wrong)} tensors have the wrong shape, e.g. {first} "
            f"is {tuple(state_dict[first].shape)} in the weights but {tuple(expected[first].shape)} in the "
            f"model (are they for another variant?)"
        )
    module.load_state_dict(state_dict, strict=False)


# Importing the family modules fills ENCODERS; they import the helpers above, which are defined by now.
from core.models import cnn, mit, vit  # noqa: E402, F401
