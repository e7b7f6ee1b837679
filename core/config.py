"""Configuration: every constant of the AFA paper as a named value with the paper's default.

A config is a plain nested dict. ``DEFAULTS`` holds the reference settings of the paper
(PASCAL VOC, MiT-b1). YAML files in ``core/configs`` override what differs, and say why.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # core/configs/<dataset>.yaml
# what each model (model.name) can be trained as (train.mode); the first is its default
TRAINING_MODES: dict[str, tuple[str, ...]] = {
    "afa": ("afa", "cam", "supervised"),  # the paper | classification only | ground-truth masks
    "cnn_cam": ("cam",),  # the CNN CAM baseline trains the classification branch only
}

IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "afa",  # afa (the paper) | cnn_cam (classification branch only, CNN CAM baseline)
        "backbone": "mit_b1",  # mit_b0..mit_b5 | vit_tiny/vit_small/vit_base (ToCo) | resnet18/50
        "strides": [4, 2, 2, 1],  # AFA: stage 4 does not downsample, output stride 16
        "pretrained": None,  # path to a local weights file, "hub" to download (online only), or None
        "num_classes": 21,  # C, background included
        "decoder_dim": 256,  # SegFormer all-MLP head embedding
        "decoder_dropout": 0.1,
        "aff_blocks": 2,  # affinity from the raw scores of the last 2 stage-4 blocks
        "pooling": "gmp",  # global max pooling for classification
        "drop_path_rate": 0.1,
    },
    "data": {
        "name": "voc",  # voc | coco | scenes | folder
        "root": "data/VOCdevkit/VOC2012",
        "train_split": "train_aug",
        "val_split": "val",
        "crop_size": 512,
        "resize_range": [512, 2048],  # random resize of the long side
        "rescale_range": [0.5, 2.0],
        "flip": True,
        "ignore_index": 255,
        "mean": IMAGENET_MEAN_255,
        "std": IMAGENET_STD_255,
        "num_workers": 4,
        # a training image that cannot be decoded completely (e.g. a truncated JPEG): stop with its
        # file name, or skip it (train on the next readable image instead); never train on it
        "on_corrupt": "stop",  # stop | skip
    },
    "optim": {
        "lr": 6.0e-5,
        "betas": [0.9, 0.999],
        "weight_decay": 0.01,
        "head_lr_mult": 10.0,  # classifier, affinity head and decoder
        "norm_lr": 0.0,  # encoder norm layers are frozen
        "warmup_iters": 1500,
        "warmup_ratio": 1.0e-6,
        "power": 1.0,
    },
    "train": {
        "mode": "afa",  # afa | cam (classification only) | supervised (ground-truth masks)
        "max_iters": 20000,
        "batch_size": 2,  # per process (paper: 2 per GPU x 2 GPUs)
        "cam_iters": 2000,  # classification loss alone before this iteration
        "aff_label_iters": 6000,  # AFA labels supervise the segmentation after this iteration
        "use_par": True,
        "use_aff": True,  # affinity loss and AFA-propagated labels
        "use_reg": True,  # dense-CRF energy loss (L_reg)
        "seed": 0,
        "log_every": 20,
        "eval_every": 2000,
        "save_every": 1000,
        "eval_limit": None,
        # numeric precision of the model passes (core/precision.py): auto = bf16 autocast on CPUs
        # with native bf16 and on CUDA GPUs with bf16, fp16 + grad scaler on GPUs with only fast
        # fp16, fp32 elsewhere; fp32 = the exact path. Losses, PAR and random walk stay fp32.
        "precision": "auto",  # auto | fp32 | bf16 | fp16
        "out_dir": "runs",
        "device": "auto",  # auto (this process's GPU when CUDA is available, else CPU) | cpu | cuda
        "eval_crf": False,  # periodic evaluation also runs the dense CRF (slow)
        # offline pretraining only (mode cam, not the paper): k > 1 lays the batch out as k x k
        # mosaics and classifies every tile on its own; tiles without an item (label all zero)
        # teach the classifier that background tokens score no class, next to tiles that do
        "tile_grid": 1,
        "stop_after": None,  # stop (status "stopped", resumable) after this iteration; None = run on
    },
    "cam": {
        "scales": [1.0, 0.5, 1.5],
        "bg_thresh": 0.45,
        "high_thresh": 0.55,
        "low_thresh": 0.35,
        "eps": 1.0e-5,
    },
    "par": {
        "dilations": [1, 2, 4, 8, 12, 24],
        "iters": 10,
        "w1": 0.3,
        "w2": 0.01,
        "downscale": 2,  # PAR runs at half resolution
    },
    "affinity": {
        "radius": 8,
        "power": 2,  # element-wise power of the affinity in the transition matrix
        "col_eps": 0.1,  # column sum + 0.1
        "steps": 1,
    },
    "loss": {
        # multilabel: the paper's multi-label soft margin. softmax: cross-entropy over the classes,
        # only for single-label data (the offline single-item pretraining, where it learns faster)
        "cls_type": "multilabel",
        "cls": 1.0,
        "seg": 0.1,
        "aff": 0.1,
        "reg": 0.01,
        "reg_sigma_rgb": 15.0,
        "reg_sigma_xy": 100.0,
        "reg_scale": 0.5,
        "reg_exact_max_pixels": 4096,  # exact dense energy up to this many pixels, else sampled
        "reg_samples": 512,  # Monte Carlo partners per pixel above that size (unbiased estimate)
        # The energy is summed over pixels, averaged over images and scaled by 1e-7, as the
        # DenseEnergyLoss of Tang et al. that the authors use; then weighted by ``reg`` above.
        "reg_normalize": "sum",  # sum | pixels (per-pixel mean: scale-free alternative)
        "reg_energy_scale": 1.0e-7,
    },
    "infer": {
        "scales": [1.0, 0.5, 0.75],
        "flip": True,
        # how the segmentation logits of the scales are combined: max = the authors' test script
        # (max over scales at the scale-1.0 logit resolution, stride 4); mean = mean of the
        # logits resized to the image
        "seg_merge": "max",  # max | mean
        "crf": {
            "iters": 10,
            "gauss_sxy": 3,
            "gauss_compat": 3,
            "bilateral_sxy": 64,
            "bilateral_srgb": 5,
            "bilateral_compat": 4,
        },
    },
}


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the offending key."""


# keys whose value counts something: an integer (2.0 is read as 2; 2.5 is refused); null stays null
INTEGER_KEYS = (
    "model.num_classes", "model.decoder_dim", "model.aff_blocks",
    "data.crop_size", "data.ignore_index", "data.num_workers",
    "optim.warmup_iters",
    "train.max_iters", "train.batch_size", "train.cam_iters", "train.aff_label_iters", "train.seed",
    "train.log_every", "train.eval_every", "train.save_every", "train.eval_limit", "train.tile_grid",
    "train.stop_after",
    "par.iters", "par.downscale", "affinity.radius", "affinity.steps",
    "loss.reg_exact_max_pixels", "loss.reg_samples", "infer.crf.iters",
)

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - yaml is lenient
        raise ConfigError(f"cannot parse override value {text!r}: {exc}") from exc


def _merge(base: dict, update: dict, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = _check_type(path, base[key], value)


def _check_type(path: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        # YAML 1.1 reads "1e-3" (no dot) as a string; where a number is expected, it is one
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
            value = int(value) if isinstance(default, int) and value.is_integer() else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
        return type(default)(value) if isinstance(default, float) else value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        return list(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"config key '{path}' must be a string, got {value!r}")
    return value


def set_by_path(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``dotted='a.b'``, with the same checks as a file."""
    keys = dotted.split(".")
    node: dict = {}
    root = node
    for key in keys[:-1]:
        node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    _merge(cfg, root)


def get_by_path(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


SCHEDULE_KEYS = ("train.cam_iters", "train.aff_label_iters", "optim.warmup_iters")


def stretched_schedule(cfg: dict, max_iters: int) -> dict[str, int]:
    """The config's schedule (``SCHEDULE_KEYS``: classification alone, the start of the AFA labels,
    the warm-up) for a run of ``max_iters`` iterations instead of ``train.max_iters``, each phase
    keeping its share (the paper's 10 %, 30 % and 7.5 % of 20000): what a shorter or longer run of
    a recipe sets so that, say, a 300-iteration run still trains its decoder."""
    base = int(cfg["train"]["max_iters"])
    if base <= 0 or max_iters <= 0:
        raise ConfigError(f"a schedule stretches between positive lengths, got {base} and {max_iters}")
    return {key: int(round(get_by_path(cfg, key) * max_iters / base)) for key in SCHEDULE_KEYS}


def _check_integers(cfg: dict) -> None:
    """Every ``INTEGER_KEYS`` value is an int (or null); integer-valued floats become ints."""
    for dotted in INTEGER_KEYS:
        keys = dotted.split(".")
        node = get_by_path(cfg, ".".join(keys[:-1]))
        value = node[keys[-1]]
        if isinstance(value, float) and value.is_integer():
            node[keys[-1]] = value = int(value)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"config key '{dotted}' must be a whole number, got {value!r}")


def validate(cfg: dict) -> dict:
    """Reject values and combinations that cannot run; return ``cfg``."""
    _check_integers(cfg)
    m, d, t, o = cfg["model"], cfg["data"], cfg["train"], cfg["optim"]
    if not o["lr"] > 0:
        raise ConfigError(f"optim.lr must be positive, got {o['lr']!r}")
    if o["weight_decay"] < 0 or o["head_lr_mult"] < 0 or o["norm_lr"] < 0:
        raise ConfigError("optim.weight_decay, optim.head_lr_mult and optim.norm_lr must not be negative")
    if len(o["betas"]) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o["betas"]):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o['betas']!r}")
    if o["warmup_iters"] < 0 or not 0 < o["warmup_ratio"] <= 1:
        raise ConfigError("optim.warmup_iters must be >= 0 and optim.warmup_ratio in (0, 1]")
    if t["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {t['device']!r}")
    if d["on_corrupt"] not in ("stop", "skip"):
        raise ConfigError(f"data.on_corrupt must be stop or skip, got {d['on_corrupt']!r}")
    if d["num_workers"] < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d['num_workers']}")
    if m["num_classes"] < 2:
        raise ConfigError("model.num_classes must count background plus at least one class")
    if d["crop_size"] < 32 or d["crop_size"] % 16:
        raise ConfigError(f"data.crop_size must be a multiple of 16 and at least 32, got {d['crop_size']}")
    if t["batch_size"] < 1:
        raise ConfigError("train.batch_size must be at least 1")
    if t["max_iters"] < 1:
        raise ConfigError("train.max_iters must be at least 1")
    if m["name"] not in TRAINING_MODES:
        raise ConfigError(f"model.name must be one of {', '.join(TRAINING_MODES)}, got {m['name']!r}")
    modes = TRAINING_MODES[m["name"]]
    if t["mode"] not in modes:
        raise ConfigError(
            f"train.mode must be {' or '.join(modes)} for model.name={m['name']}, got {t['mode']!r}"
        )
    if not cfg["cam"]["scales"] or any(s <= 0 for s in cfg["cam"]["scales"]):
        raise ConfigError("cam.scales must be a non-empty list of positive numbers")
    if not 0.0 <= cfg["cam"]["low_thresh"] <= cfg["cam"]["high_thresh"] <= 1.0:
        raise ConfigError("cam thresholds must satisfy 0 <= low_thresh <= high_thresh <= 1")
    if cfg["par"]["iters"] < 0 or not cfg["par"]["dilations"]:
        raise ConfigError("par.iters must be >= 0 and par.dilations non-empty")
    if cfg["loss"]["cls_type"] not in ("multilabel", "softmax"):
        raise ConfigError(f"loss.cls_type must be multilabel or softmax, got {cfg['loss']['cls_type']!r}")
    if cfg["loss"]["cls_type"] == "softmax" and t["mode"] != "cam":
        raise ConfigError(
            "loss.cls_type=softmax is for single-label classification pretraining (train.mode=cam)"
        )
    k = t["tile_grid"]
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"train.tile_grid must be a positive integer, got {k!r}")
    if k > 1:
        if t["mode"] != "cam":
            raise ConfigError("train.tile_grid > 1 is for classification pretraining (train.mode=cam)")
        if t["batch_size"] % (k * k):
            raise ConfigError(f"train.batch_size must be a multiple of {k * k} for train.tile_grid={k}")
        if cfg["loss"]["cls_type"] != "multilabel":
            raise ConfigError(
                "train.tile_grid > 1 needs loss.cls_type=multilabel (item-free tiles have no class)"
            )
    if t["precision"] not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision must be auto, fp32, bf16 or fp16, got {t['precision']!r}")
    if cfg["infer"]["seg_merge"] not in ("max", "mean"):
        raise ConfigError(f"infer.seg_merge must be max or mean, got {cfg['infer']['seg_merge']!r}")
    if cfg["affinity"]["radius"] < 1:
        raise ConfigError("affinity.radius must be at least 1")
    for term in ("cls", "seg", "aff", "reg"):
        if cfg["loss"][term] < 0:
            raise ConfigError(f"loss.{term} (a loss weight) must not be negative, got {cfg['loss'][term]}")
    return cfg


def upgrade_legacy_keys(data: dict) -> dict:
    """A config of an older version (e.g. a run folder's config.yaml) in today's keys.

    ``train.amp`` (mixed precision on CUDA, default false) became ``train.precision``: a run
    saved with ``amp: false`` trained in fp32 and resumes in fp32 (``precision: fp32``); ``amp:
    true`` becomes ``precision: auto``. An explicit ``precision`` next to it wins.
    """
    train = data.get("train")
    if isinstance(train, dict) and "amp" in train:
        train = dict(train)
        amp = train.pop("amp")
        if amp not in (True, False, None):
            raise ConfigError(f"config key 'train.amp' must be true or false, got {amp!r}")
        train.setdefault("precision", "auto" if amp else "fp32")
        data = {**data, "train": train}
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults <- YAML file <- ``key.sub=value`` overrides, validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _merge(cfg, upgrade_legacy_keys(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        set_by_path(cfg, key.strip(), _parse_value(text))
    return validate(cfg)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Where two resolved configs differ: ``key.sub: OLD -> NEW``, one per leaf, in key order."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m core.config CONFIG [key.sub=value ...]`` prints the resolved config (YAML);
    with ``--against RUN/config.yaml`` it prints where that run's config differs instead, exit
    code 1 when it does (as ``diff``), 0 when it is the same recipe, 2 for bad input."""
    from core.errors import ArgumentParser, run_cli

    def run() -> int:
        p = ArgumentParser(prog="python -m core.config", description=main.__doc__.split("\n")[0])
        p.add_argument("config", help="YAML config (core/configs/*.yaml)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value")
        p.add_argument("--against", metavar="CONFIG_YAML",
                       help="a run folder's config.yaml: print where it differs from this config")
        args = p.parse_intermixed_args(argv)
        cfg = load_config(args.config, args.overrides)
        if args.against is None:
            print(yaml.safe_dump(cfg, sort_keys=False), end="")
            return 0
        changed = differences(load_config(args.against), cfg)
        print("\n".join(changed) if changed else "same config")
        return 1 if changed else 0

    return run_cli(run, "python -m core.config")


if __name__ == "__main__":
    import sys

    sys.exit(main())
