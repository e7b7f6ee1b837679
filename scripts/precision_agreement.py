"""Faithfulness of the fast precision: every label stage of ``core.analyze`` under ``fp32`` (the
exact path) and under another setting (default ``auto``), on the same images.

    python scripts/precision_agreement.py --checkpoint checkpoints/afa_mit_b0_scenes.safetensors \
        --data data/scenes160 [--split val] [--limit 100] [--precision auto] [--out R.json]

Prints (and writes) one JSON object: the precision ``auto`` resolved to, and per stage the pixel
agreement of the two label maps (share of pixels with the same class id, over all pixels) and the
mIoU of each against the ground truth. The images are analysed as ``python -m core.evaluate``
does (the ground-truth image-level labels, ``--labels dense``), so the mIoUs equal that command's
with ``--precision fp32`` and ``--precision auto``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from core import load_model
    from core.analyze import analyze
    from core.evaluate import _to_numpy, _to_uint8_hwc, open_evaluation
    from core.method.metrics import ConfusionMatrix
    from core.precision import resolve_precision

    cfg, dataset = open_evaluation(args.checkpoint, args.data, args.split)
    device = torch.device(args.device)
    model = load_model(args.checkpoint, device=device)
    num_classes, ignore = int(cfg["model"]["num_classes"]), int(cfg["data"]["ignore_index"])
    runs = {"fp32": "fp32", "fast": args.precision}
    matrices = {(run, s): ConfusionMatrix(num_classes, ignore) for run in runs for s in STAGES}
    same = dict.fromkeys(STAGES, 0)
    total = dict.fromkeys(STAGES, 0)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    for index in range(n):
        sample = dataset[index]
        gt = _to_numpy(sample["mask"]).astype(np.int64)
        present = sorted(int(c) for c in np.unique(gt) if 0 < c < num_classes)
        image = _to_uint8_hwc(sample["image_raw"])
        out = {run: analyze(model, image, labels=present, scales=cfg["cam"]["scales"], attention=False,
                            dense=True, precision=precision, seg_merge=cfg["infer"]["seg_merge"])
               for run, precision in runs.items()}
        for stage in STAGES:
            a, b = getattr(out["fp32"], stage), getattr(out["fast"], stage)
            if a is None or b is None:
                continue
            same[stage] += int((np.asarray(a) == np.asarray(b)).sum())
            total[stage] += int(np.asarray(a).size)
            for run in runs:
                matrices[(run, stage)].update(np.asarray(getattr(out[run], stage)), gt)
    names = list(model.classes)
    result = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "n_images": n,
        "precision": resolve_precision(args.precision, device).name,
        "stages": {
            stage: {
                "agreement": same[stage] / total[stage],
                "miou_fp32": matrices[("fp32", stage)].as_dict(names)["miou"],
                "miou_fast": matrices[("fast", stage)].as_dict(names)["miou"],
            }
            for stage in STAGES
            if total[stage]
        },
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
