"""The Train tab's form -> the ``python -m core.train`` command: config, overrides and notes.

Every list (encoders, the model and modes each encoder trains, datasets and their configs) and
every rule (the config's validation) comes from core; what is the app's own is the public
demo's policy (scenes only, small encoders, capped iterations / batch / crop) and how often a run
started here logs, saves and evaluates.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from app.runs import NAME_RE, ROOT
from core import catalog
from core.config import load_config, stretched_schedule
from core.errors import UserError

PUBLIC_ENCODERS = ("mit_b0", "resnet10t", "resnet18")
# AFA_APP_PUBLIC_ITERS lowers the iteration cap (the tests of a fresh Space train a few steps)
PUBLIC_LIMITS = {"iters": int(os.environ.get("AFA_APP_PUBLIC_ITERS", "300")), "batch": 4, "crop": 128}


@dataclass
class TrainForm:
    """The Train tab's settings, as typed by the user."""

    name: str = ""
    dataset: str = "scenes"
    data_root: str = ""
    encoder: str = "mit_b0"
    mode: str = "afa"
    iters: int = 2000
    batch: int = 4
    crop: int = 256
    w_seg: float = 0.1
    w_aff: float = 0.1
    w_reg: float = 0.01
    use_par: bool = True
    use_aff: bool = True
    use_reg: bool = True
    seed: int = 0
    eval_every: int = 500


def encoder_choices(public: bool) -> list[str]:
    return [e for e in catalog.available_encoders() if not public or e in PUBLIC_ENCODERS]


def dataset_choices(public: bool) -> list[str]:
    return ["scenes"] if public else list(catalog.trainable_datasets())


def build_overrides(form: TrainForm, public: bool, root: Path = ROOT) -> tuple[str, list[str], list[str]]:
    """``(config path, key=value overrides, notes)`` for ``python -m core.train``, checked by
    core's config loader (a bad setting is a message now, not a dead process later)."""
    notes: list[str] = []
    datasets, encoders = dataset_choices(public), encoder_choices(public)
    if form.dataset not in datasets:
        raise UserError(
            "This public demo trains on the scenes benchmark only."
            if public
            else f"Dataset {form.dataset!r} cannot be trained on; choose one of {', '.join(datasets)}."
        )
    if form.encoder not in encoders:
        raise UserError(
            f"Encoder {form.encoder!r} is not available here; choose one of {', '.join(encoders)}."
        )
    iters, batch, crop = int(form.iters), int(form.batch), int(form.crop)
    if public:
        for key, value in (("iters", iters), ("batch", batch), ("crop", crop)):
            if value > PUBLIC_LIMITS[key]:
                notes.append(f"{key} capped at {PUBLIC_LIMITS[key]} in the public demo")
        iters, batch = min(iters, PUBLIC_LIMITS["iters"]), min(batch, PUBLIC_LIMITS["batch"])
        crop = min(crop, PUBLIC_LIMITS["crop"])
    model = catalog.model_for_encoder(form.encoder)
    modes = catalog.training_modes(model)
    mode = form.mode if form.mode in modes else modes[0]
    if mode != form.mode:
        notes.append(f"{form.encoder} trains with mode {' or '.join(modes)} only ({model})")
    overrides = [
        f"model.name={model}",
        f"model.backbone={form.encoder}",
        f"train.mode={mode}",
        f"train.max_iters={iters}",
        f"train.batch_size={batch}",
        f"data.crop_size={crop}",
        f"loss.seg={float(form.w_seg)}",
        f"loss.aff={float(form.w_aff)}",
        f"loss.reg={float(form.w_reg)}",
        f"train.use_par={str(bool(form.use_par)).lower()}",
        f"train.use_aff={str(bool(form.use_aff)).lower()}",
        f"train.use_reg={str(bool(form.use_reg)).lower()}",
        f"train.seed={int(form.seed)}",
        # a run started here logs, saves and evaluates often enough to be watched
        f"train.eval_every={max(1, min(int(form.eval_every or iters), iters))}",
        f"train.save_every={max(1, min(250, iters // 4 or 1))}",
        f"train.log_every={max(1, min(20, iters // 50 or 1))}",
    ]
    config = catalog.dataset_config(form.dataset)
    if iters >= 1:  # the recipe's phases keep their shares of a run of another length (else _check says why)
        schedule = stretched_schedule(load_config(config), iters)
        overrides += [f"{key}={value}" for key, value in schedule.items()]
    if form.dataset == "scenes":  # the encoder pretrained offline for this backbone, when one is shipped
        shipped = Path("checkpoints") / f"encoder_{form.encoder}_fmnist.safetensors"
        overrides.append(f"model.pretrained={shipped if (root / shipped).is_file() else 'null'}")
    if form.data_root and not public and form.dataset != "scenes":
        if any(c in form.data_root for c in "\n\r\0"):
            raise UserError("The data folder path contains control characters.")
        overrides.append(f"data.root={form.data_root.strip()}")
    _check(config, overrides)
    return str(config), overrides, notes


def _check(config: Path, overrides: list[str]) -> None:
    """Core's config loader on the settings: a ``ConfigError`` says which one is wrong. (Missing
    scenes data is not an error: Start generates it, see ``app.train_data``.)"""
    try:
        load_config(config, overrides)
    except UserError as exc:
        raise UserError(f"Invalid settings: {exc}") from exc


def new_run_name(form: TrainForm) -> str:
    name = (form.name or "").strip()
    if not name:
        return time.strftime(f"{form.encoder}-%Y%m%d-%H%M%S")
    name = re.sub(r"\s+", "-", name)
    if not NAME_RE.match(name):
        raise UserError("A run name uses letters, digits, '-', '_' or '.', up to 64 characters.")
    return name
