"""Convert checkpoints from elsewhere into this project's format.

    python -m core.convert official-afa IN.pth OUT.safetensors --backbone mit_b1 [--classes voc|coco|FILE]

``official-afa`` reads a checkpoint saved by the authors' training script (rulixiang/afa: the
``WeTr`` model's state dict, optionally wrapped by DistributedDataParallel as ``module.``) with
``torch.load(weights_only=True)`` and writes safetensors + metadata. Our module names follow the
authors' (encoder / classifier / attn_proj / decoder, SegFormer names inside), so the mapping is
a prefix strip plus checks; every weight must land somewhere and every slot must be filled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.checkpoint import save_checkpoint
from core.config import DEFAULTS
from core.data.voc import VOC_CLASSES


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
    from core.models.registry import create_model

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    try:
        raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one sentence
        raise ValueError(
            f"{src.name} is not a plain PyTorch state dict that loads with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{src.name} holds a {type(raw).__name__}, not a state dict")
    state = official_afa_state_dict(raw)
    if "classifier.weight" not in state:
        raise ValueError(f"{src.name} has no 'classifier.weight': not a checkpoint of the authors' AFA model")
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
        raise ValueError(f"{len(classes)} class names given but the classifier has {num_classes - 1} classes")
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
        raise ValueError(
            f"{src.name} does not match AFA with {backbone}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); is --backbone right?"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
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
            raise ValueError(f"{Path(src).name} has no encoder weights")
        meta = {
            **meta,
            "data": {**(meta.get("data") or {}), "encoder_only": True, "exported_from": Path(src).name},
        }
    return save_checkpoint(dst, state, meta, dtype=torch.float16 if fp16 else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.convert", description=__doc__.split("\n\n")[0])
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
    if args.kind == "export":
        try:
            out = export_checkpoint(args.src, args.dst, fp16=args.fp16, encoder_only=args.encoder_only)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {out}")
        return 0
    classes = None
    if args.classes == "voc":
        classes = VOC_CLASSES
    elif args.classes == "coco":
        classes = _coco_classes()
    elif args.classes:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    try:
        out = convert_official_afa(args.src, args.dst, args.backbone, classes)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
