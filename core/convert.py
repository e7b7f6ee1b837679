"""Convert checkpoints from elsewhere into this project's format.

    python -m core.convert official-afa IN.pth OUT.safetensors --backbone mit_b1 [--classes voc|coco|FILE]

``official-afa`` reads a checkpoint saved by the authors' training script (rulixiang/afa: the
``WeTr`` model's state dict, optionally wrapped by DistributedDataParallel as ``module.``) with
``torch.load(weights_only=True)`` and writes safetensors + metadata. Our module names follow the
authors' (encoder / classifier / attn_proj / decoder, SegFormer names inside), so the mapping is
a prefix strip plus checks; every weight must land somewhere and every slot must be filled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.checkpoint import CheckpointError, save_checkpoint
from core.config import DEFAULTS
from core.data.voc import VOC_CLASSES
from core.errors import ArgumentParser, UserError, run_cli


def _coco_classes() -> list[str]:
    from core.data.coco import COCO_CLASSES

    return list(COCO_CLASSES)


# keys the authors' model carries that have no counterpart here (no parameters of ours)
_DROPPED_PREFIXES = ("encoder.head.",)


def official_afa_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' WeTr keys -> ours: strip DDP's ``module.``, drop the unused ImageNet head."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(_DROPPED_PREFIXES):
            continue
        out[key] = value
    return out


def convert_official_afa(
    src: str | Path, dst: str | Path, backbone: str, classes: list[str] | None = None, strides=(4, 2, 2, 1)
) -> Path:
    """Convert and verify: the result loads with ``core.load_model`` with every weight in place."""
    from core.loading import load_model
    from core.models.encoders import load_weights_file
    from core.models.registry import create_model

    src = Path(src)
    raw = load_weights_file(src, fix="pass the .pth file saved by the authors' AFA training script")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{src.name} holds a {type(raw).__name__}, not a state dict")
    state = official_afa_state_dict(raw)
    if "classifier.weight" not in state:
        raise CheckpointError(
            f"{src.name} has no 'classifier.weight': not a checkpoint of the authors' AFA model"
        )
    num_classes = state["classifier.weight"].shape[0] + 1
    if classes is None:
        classes = (
            VOC_CLASSES
            if num_classes == 21
            else _coco_classes()
            if num_classes == 81
            else ["background"] + [f"class{i}" for i in range(1, num_classes)]
        )
    if len(classes) != num_classes:
        raise UserError(
            f"{len(classes)} class names given but the classifier of {src.name} has {num_classes - 1} "
            f"classes plus background: --classes must list {num_classes} names, background first"
        )
    model_cfg = {
        **DEFAULTS["model"],
        "backbone": backbone,
        "strides": list(strides),
        "num_classes": num_classes,
        "pretrained": None,
    }
    model = create_model({"model": model_cfg}, classes=classes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{src.name} does not match AFA with {backbone}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is --backbone right?"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{key} has shape {tuple(state[key].shape)} in {src.name} but {tuple(value.shape)} "
                f"in AFA with {backbone}; is --backbone right?"
            )
    meta = {
        "model": model_cfg,
        "classes": classes,
        "mean": DEFAULTS["data"]["mean"],
        "std": DEFAULTS["data"]["std"],
        "step": None,
        "data": {"converted_from": src.name, "format": "official-afa"},
        "metrics": {},
    }
    out = save_checkpoint(dst, {k: state[k] for k in expected}, meta)
    load_model(out, device="cpu")  # proves the file opens with every weight in place
    return out


def export_checkpoint(
    src: str | Path, dst: str | Path, fp16: bool = False, encoder_only: bool = False
) -> Path:
    """Re-save a checkpoint of this project: in fp16 (to ship it small), or only its encoder's
    weights (keys without the ``encoder.`` prefix), a file that ``model.pretrained`` accepts."""
    from core.checkpoint import load_checkpoint

    state, meta = load_checkpoint(src)
    if encoder_only:
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        if not state:
            raise CheckpointError(f"{Path(src).name} has no encoder weights")
        meta = {
            **meta,
            "data": {**(meta.get("data") or {}), "encoder_only": True, "exported_from": Path(src).name},
        }
    return save_checkpoint(dst, state, meta, dtype=torch.float16 if fp16 else None)


def read_class_list(spec: str) -> list[str]:
    """``voc``, ``coco`` or a text file with one class name a line (background first)."""
    if spec == "voc":
        return list(VOC_CLASSES)
    if spec == "coco":
        return _coco_classes()
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--classes {spec}: no such file (give voc, coco, or a text file with one class "
                        "name a line, background first)")
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--classes {spec} is not a readable text file of class names ({exc})") from exc
    if len(names) < 2:
        raise UserError(f"--classes {spec} must list background and at least one class, one a line")
    return names


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog="python -m core.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("official-afa", help="a .pth saved by the authors' AFA training script")
    p.add_argument("src", help="the authors' checkpoint (.pth)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--backbone", required=True, help="mit_b0 .. mit_b5 (the authors use mit_b1)")
    p.add_argument(
        "--classes",
        default=None,
        help="voc, coco, or a text file with one class name a line (background first)",
    )
    e = sub.add_parser("export", help="re-save a checkpoint of this project (fp16 and/or encoder only)")
    e.add_argument("src")
    e.add_argument("dst")
    e.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    e.add_argument("--encoder-only", action="store_true", help="keep only the encoder (for model.pretrained)")
    args = parser.parse_args(argv)
    if Path(args.dst).is_dir():
        raise UserError(f"the output {args.dst} is a folder; name the .safetensors file to write")
    if args.kind == "export":
        out = export_checkpoint(args.src, args.dst, fp16=args.fp16, encoder_only=args.encoder_only)
    else:
        classes = read_class_list(args.classes) if args.classes else None
        out = convert_official_afa(args.src, args.dst, args.backbone, classes)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with one line on stderr for bad input (a bug raises with its traceback)."""
    return run_cli(lambda: _main(argv), "python -m core.convert")


if __name__ == "__main__":
    raise SystemExit(main())
