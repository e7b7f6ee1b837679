"""``python -m core.bench``: timings of the core, printed as one JSON object.

Every figure is the median of ``--repeats`` runs after a warm-up (three steps for the training
steps), wall clock unless ``--clock cpu``. Keys:
- ``precision``: what ``train.precision=auto`` resolves to on the device (the "default" below);
- ``par_s`` / ``par_ref_s`` / ``par_speedup``: PAR on one 256x256 image, 4 score-map sets of 3
  channels, 10 iterations; the reference rebuilds its kernel per set (``core/bench_reference.py``);
- ``analyze_s`` (default precision) and ``analyze_fp32_s``: ``core.analyze`` of a 320x320 image,
  MiT-b0, CAM scales 1.0/0.5/1.5, segmentation scales 1.0/0.5/0.75, every field (both random
  walks, every block's attention);
- ``train_step_s`` (default precision), ``train_step_fp32_s``, ``train_step_ref_s`` (the authors'
  step in fp32, ``core/bench_reference.py``) and the speed-ups over the reference: one full AFA
  step, MiT-b0, crop 224, batch 4, 21 classes, every loss on, backward and optimiser step
  included; ``train_step_peak_mb`` / ``train_step_fp32_peak_mb`` / ``train_step_ref_peak_mb``:
  the memory one step adds to what the process held before it (model, optimiser, batch): CPU:
  peak resident set size of the first step in a fresh process, sampled every millisecond; CUDA:
  ``max_memory_allocated``;
- ``scenes_*``: the scenes recipe (``core/configs/scenes.yaml``: MiT-b0, its crop, batch and
  settings, e.g. its L_reg sampling):
  training images/s (default, fp32, reference) and evaluation images/s (``core.analyze`` of one
  image of the config's crop size, CAM and segmentation scales, no attention views);
- ``voc_step_s`` / ``voc_step_peak_mb``: one step at the paper's VOC setting (MiT-b1, crop 512,
  batch 2, 21 classes) in the default precision;
- ``torch``, ``threads``, ``device``, ``repeats``, ``clock`` (``--clock cpu``: process CPU time
  instead of wall time, for a shared machine with ``OMP_NUM_THREADS=1``).
``--device cuda`` runs the same keys on a GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from core.errors import ArgumentParser, UserError, run_cli

# The clock of every timing: wall time, or (``--clock cpu``) this process's CPU time, which on a
# shared machine and with one thread approximates the wall time the work would take alone.
CLOCK = {"fn": time.perf_counter}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    clock = CLOCK["fn"]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
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


class PeakMemory:
    """Memory a block of work adds at its peak, in MB: CUDA ``max_memory_allocated`` minus what
    was allocated before; on a CPU the peak resident set size (sampled every millisecond from
    /proc/self/statm; the process-wide ``ru_maxrss`` where /proc is missing) minus the RSS before."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, 0.0

    @staticmethod
    def _rss() -> int:
        import os

        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        import threading

        self.before = self.peak = self._rss()
        self.stop = threading.Event()

        def sample() -> None:
            while not self.stop.wait(0.001):
                self.peak = max(self.peak, self._rss())

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.before) / 2**20
            return
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.mb = (self.peak - self.before) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_analyze(device: torch.device, repeats: int) -> dict:
    from core.analyze import analyze
    from core.config import load_config
    from core.models.registry import create_model

    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=11"])
    model = create_model(cfg).to(device).eval()
    img = smooth_image(320, 320)
    out = {}
    for key, precision in (("analyze_s", "auto"), ("analyze_fp32_s", "fp32")):
        out[key] = median_time(lambda p=precision: analyze(model, img, scales=(1.0, 0.5, 1.5), precision=p),
                               repeats)
    return out


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


def _step_runner(device: torch.device, crop: int, batch_size: int, backbone: str, num_classes: int,
                 precision: str = "auto", reference: bool = False,
                 config: str | None = None) -> Callable[[], None]:
    """One training step with every loss on (``core.step``), or the authors' step (``reference``),
    backward and AdamW included, on a fresh model and a synthetic batch. ``config``: a recipe whose
    other settings apply (e.g. the scenes recipe's L_reg sampling); default the paper's."""
    from core.bench_reference import ReferencePAR, reference_training_step
    from core.config import load_config
    from core.method.affinity import radius_mask
    from core.models.registry import create_model
    from core.optim import build_optimizer
    from core.step import training_step

    cfg = load_config(config, [f"model.backbone={backbone}", f"model.num_classes={num_classes}",
                               f"data.crop_size={crop}", f"train.batch_size={batch_size}",
                               f"train.precision={precision}", "model.pretrained=null"])
    torch.manual_seed(0)
    model = create_model(cfg).to(device).train()
    optimizer = build_optimizer(model, cfg["optim"])
    batch = _synthetic_batch(batch_size, crop, num_classes, device, cfg)
    step_no = cfg["train"]["aff_label_iters"] + 1  # every loss on, AFA labels supervise the decoder
    if reference:
        par = ReferencePAR(cfg["par"]["dilations"], cfg["par"]["iters"], cfg["par"]["w1"],
                           cfg["par"]["w2"]).to(device)
        largest = int(crop * max(cfg["cam"]["scales"]))
        with torch.no_grad():  # the token grids, and the radius masks built once as their script
            grid = model.affinity_grid(model.encoder(batch["image"][:1]))
            big = model.affinity_grid(model.encoder(torch.nn.functional.interpolate(
                batch["image"][:1], size=(largest, largest), mode="bilinear", align_corners=False)))
        radius = cfg["affinity"]["radius"]
        masks = {"train": radius_mask(*grid, radius, device), "infer": radius_mask(*big, radius, device)}

    def one_step() -> None:
        if reference:
            loss = reference_training_step(model, batch, cfg, par, masks)
        else:
            loss = training_step(model, batch, cfg, step_no).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)

    return one_step


def _first_step_peak(kwargs: dict, threads: int, queue) -> None:
    """In a fresh process: the memory the first step adds (see ``step_peak_mb``)."""
    torch.set_num_threads(threads)
    one_step = _step_runner(torch.device("cpu"), **kwargs)
    with PeakMemory(torch.device("cpu")) as peak:
        one_step()
    queue.put(peak.mb)


def step_peak_mb(device: torch.device, **kwargs) -> float:
    """Peak memory of one step above what the process held before it (model, optimiser, batch).
    CUDA: ``max_memory_allocated`` of a step after a warm-up. CPU: the peak resident set size of
    the first step in a fresh process (a process that ran before reuses freed memory without its
    RSS growing, which would hide the step's peak)."""
    if device.type == "cuda":
        one_step = _step_runner(device, **kwargs)
        one_step()
        with PeakMemory(device) as peak:
            one_step()
        return peak.mb
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_first_step_peak, args=(kwargs, torch.get_num_threads(), queue))
    child.start()
    mb = queue.get()
    child.join()
    return mb


def time_train_step(device: torch.device, repeats: int, **kwargs) -> tuple[float, float]:
    """(median seconds, peak MB) of one training step; keyword arguments: ``_step_runner``'s."""
    # a few warm-up steps: the first steps of a new model run slower (allocator, oneDNN caches)
    seconds = median_time(_step_runner(device, **kwargs), repeats, warmup=3)
    return seconds, step_peak_mb(device, **kwargs)


def bench_train_step(device: torch.device, repeats: int) -> dict:
    shape = {"crop": 224, "batch_size": 4, "backbone": "mit_b0", "num_classes": 21}
    out = {}
    for name, kwargs in (("train_step", {}), ("train_step_fp32", {"precision": "fp32"}),
                         ("train_step_ref", {"reference": True})):
        out[f"{name}_s"], out[f"{name}_peak_mb"] = time_train_step(device, repeats, **shape, **kwargs)
    out["train_step_speedup"] = out["train_step_ref_s"] / out["train_step_s"]
    out["train_step_fp32_speedup"] = out["train_step_ref_s"] / out["train_step_fp32_s"]
    return out


def bench_voc_step(device: torch.device, repeats: int) -> dict:
    seconds, peak = time_train_step(device, min(repeats, 3), crop=512, batch_size=2, backbone="mit_b1",
                                    num_classes=21)
    return {"voc_step_s": seconds, "voc_step_peak_mb": peak}


def bench_scenes_throughput(device: torch.device, repeats: int, crop: int | None = None) -> dict:
    """Training and evaluation images/s with the scenes config (synthetic inputs of its size, or of
    ``crop``: e.g. 160, the crop of the recipe before the canonical benchmark, to compare with
    figures measured then)."""
    from core.analyze import analyze
    from core.config import load_config
    from core.models.registry import create_model

    recipe = "core/configs/scenes.yaml"
    cfg = load_config(recipe)
    crop, bs = crop or cfg["data"]["crop_size"], cfg["train"]["batch_size"]
    shape = {"crop": crop, "batch_size": bs, "backbone": cfg["model"]["backbone"],
             "num_classes": cfg["model"]["num_classes"], "config": recipe}
    out = {"scenes_crop": crop, "scenes_batch": bs}
    for key, kwargs in (("scenes_train_images_per_s", {}),
                        ("scenes_train_images_per_s_fp32", {"precision": "fp32"}),
                        ("scenes_train_images_per_s_ref", {"reference": True})):
        out[key] = bs / median_time(_step_runner(device, **shape, **kwargs), repeats, warmup=3)
    out["scenes_train_speedup"] = out["scenes_train_images_per_s"] / out["scenes_train_images_per_s_ref"]
    torch.manual_seed(0)
    model = create_model(cfg).to(device).eval()
    img = smooth_image(crop, crop)
    eval_s = median_time(lambda: analyze(model, img, scales=cfg["cam"]["scales"], attention=False), repeats)
    out["scenes_eval_images_per_s"] = 1.0 / eval_s
    return out


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with one line on stderr for bad input (a bug raises with its traceback)."""
    return run_cli(lambda: _main(argv), "python -m core.bench")


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog="python -m core.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or process CPU time (with OMP_NUM_THREADS=1 on a busy "
                             "machine: close to the wall time alone)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=["par", "analyze", "train_step", "scenes", "voc"],
        help="run only these parts",
    )
    parser.add_argument("--scenes-crop", type=int, default=None,
                        help="crop of the scenes throughput (default: the scenes config's)")
    args = parser.parse_args(argv)
    from core.distributed import pick_device
    from core.loading import best_device

    if args.scenes_crop is not None and not 32 <= args.scenes_crop <= 2048:
        raise UserError(f"--scenes-crop must be in [32, 2048], got {args.scenes_crop}")
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    CLOCK["fn"] = time.process_time if args.clock == "cpu" else time.perf_counter
    device = pick_device(args.device) if args.device else best_device()
    parts = {
        "par": bench_par,
        "analyze": bench_analyze,
        "train_step": bench_train_step,
        "scenes": lambda dev, rep: bench_scenes_throughput(dev, rep, args.scenes_crop),
        "voc": bench_voc_step,
    }
    from core.precision import resolve_precision

    result: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "repeats": args.repeats,
        "clock": args.clock,
        "precision": resolve_precision("auto", device).name,
    }
    for name, fn in parts.items():
        if args.only is None or name in args.only:
            result.update(fn(device, args.repeats))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
