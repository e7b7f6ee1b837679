"""``python -m core.bench``: timings of the core, printed as one JSON object.

Keys: ``par_s`` (PAR, one 256x256 image, 4 score-map sets of 3 channels, 10 iterations),
``analyze_s`` (core.analyze, MiT-b0, 320x320, scales 1.0/0.5/1.5), ``train_step_s`` (one full AFA
step, MiT-b0, crop 224, batch 4, every loss on, backward and optimiser step included), the same
for the reference arrangement of the authors' script (``*_ref_s``, see ``core/bench_reference.py``)
and the ratios, the scenes training throughput and the evaluation throughput (images/s), plus
torch version, thread count and device. Each figure is the median of ``--repeats`` runs after a
warm-up.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from core.errors import ArgumentParser, UserError, run_cli


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth colour field with a few shapes (deterministic)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(4):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, center, int(rng.integers(h // 10, h // 4)), c, -1)
    return img


def bench_par(device: torch.device, repeats: int) -> dict:
    from core.bench_reference import ReferencePAR
    from core.method.par import apply_par, par_kernel

    img = torch.from_numpy(smooth_image(256, 256)).permute(2, 0, 1)[None].float().to(device)
    maps = torch.rand(1, 12, 256, 256, device=device)
    dil = (1, 2, 4, 8, 12, 24)

    def ours():
        with torch.no_grad():
            return apply_par(par_kernel(img, dil, 0.3, 0.01), maps, dil, iters=10)

    ref_par = ReferencePAR(dil, 10).to(device)

    def reference():
        with torch.no_grad():
            return [ref_par(img, maps[:, 3 * k : 3 * k + 3]) for k in range(4)]

    ours_s, ref_s = median_time(ours, repeats), median_time(reference, repeats)
    return {"par_s": ours_s, "par_ref_s": ref_s, "par_speedup": ref_s / ours_s}


def bench_analyze(device: torch.device, repeats: int) -> dict:
    from core.analyze import analyze
    from core.config import load_config
    from core.models.registry import create_model

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=11"])
    model = create_model(cfg).to(device).eval()
    img = smooth_image(320, 320)
    return {
        "analyze_s": median_time(lambda: analyze(model, img, labels=None, scales=(1.0, 0.5, 1.5)), repeats)
    }


def _synthetic_batch(b: int, size: int, num_classes: int, device: torch.device, cfg: dict) -> dict:
    rng = np.random.default_rng(0)
    raw = np.stack([smooth_image(size, size, seed=i) for i in range(b)]).astype(np.float32)
    raw_t = torch.from_numpy(raw).permute(0, 3, 1, 2).to(device)
    mean = torch.tensor(cfg["data"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["data"]["std"], device=device).view(1, 3, 1, 1)
    cls = torch.zeros(b, num_classes - 1, device=device)
    for i in range(b):
        cls[i, rng.choice(num_classes - 1, size=2, replace=False)] = 1
    return {
        "image": (raw_t - mean) / std,
        "image_raw": raw_t,
        "cls_label": cls,
        "valid": torch.ones(b, size, size, dtype=torch.bool, device=device),
    }


def bench_train_step(
    device: torch.device,
    repeats: int,
    crop: int = 224,
    batch_size: int = 4,
    backbone: str = "mit_b0",
    num_classes: int = 21,
) -> dict:
    import core.step as step_module
    from core.bench_reference import ReferencePAR, reference_pseudo_labels
    from core.config import load_config
    from core.models.registry import create_model
    from core.optim import build_optimizer

    cfg = load_config(
        None,
        [
            f"model.backbone={backbone}",
            f"model.num_classes={num_classes}",
            f"data.crop_size={crop}",
            f"train.batch_size={batch_size}",
        ],
    )
    torch.manual_seed(0)
    model = create_model(cfg).to(device).train()
    optimizer = build_optimizer(model, cfg["optim"])
    batch = _synthetic_batch(batch_size, crop, num_classes, device, cfg)
    step_no = cfg["train"]["aff_label_iters"] + 1  # every loss on, AFA labels supervise the decoder

    def one_step():
        res = step_module.training_step(model, batch, cfg, step_no)
        optimizer.zero_grad(set_to_none=True)
        res.loss.backward()
        optimizer.step()

    ours_s = median_time(one_step, repeats)
    ref_par = ReferencePAR(
        cfg["par"]["dilations"], cfg["par"]["iters"], cfg["par"]["w1"], cfg["par"]["w2"]
    ).to(device)
    original = step_module.pseudo_labels
    step_module.pseudo_labels = lambda net, b, c, use_afa: reference_pseudo_labels(net, b, c, ref_par)
    try:
        ref_s = median_time(one_step, repeats)
    finally:
        step_module.pseudo_labels = original
    return {"train_step_s": ours_s, "train_step_ref_s": ref_s, "train_step_speedup": ref_s / ours_s}


def bench_scenes_throughput(device: torch.device, repeats: int) -> dict:
    """Training and evaluation images/s with the scenes config (synthetic inputs of its size)."""
    from core.analyze import analyze
    from core.config import load_config

    cfg = load_config("core/configs/scenes.yaml")
    crop, bs = cfg["data"]["crop_size"], cfg["train"]["batch_size"]
    step = bench_train_step(
        device,
        repeats,
        crop=crop,
        batch_size=bs,
        backbone=cfg["model"]["backbone"],
        num_classes=cfg["model"]["num_classes"],
    )
    from core.models.registry import create_model

    model = create_model(cfg).to(device).eval()
    img = smooth_image(256, 256)
    eval_s = median_time(lambda: analyze(model, img, scales=cfg["cam"]["scales"]), repeats)
    return {
        "scenes_train_images_per_s": bs / step["train_step_s"],
        "scenes_train_images_per_s_ref": bs / step["train_step_ref_s"],
        "scenes_eval_images_per_s": 1.0 / eval_s,
    }


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with one line on stderr for bad input (a bug raises with its traceback)."""
    return run_cli(lambda: _main(argv), "python -m core.bench")


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog="python -m core.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=["par", "analyze", "train_step", "scenes"],
        help="run only these parts",
    )
    args = parser.parse_args(argv)
    from core.distributed import pick_device
    from core.loading import best_device

    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    device = pick_device(args.device) if args.device else best_device()
    parts = {
        "par": bench_par,
        "analyze": bench_analyze,
        "train_step": bench_train_step,
        "scenes": bench_scenes_throughput,
    }
    result: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "repeats": args.repeats,
    }
    for name, fn in parts.items():
        if args.only is None or name in args.only:
            result.update(fn(device, args.repeats))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
