"""Train AFA (or the CNN CAM baseline, or the supervised reference) and write a run folder.

    python -m core.train --config core/configs/scenes.yaml [--run-dir DIR] [--make-data] [key.sub=value ...]
    python -m core.train --resume runs/NAME [key.sub=value ...]
    torchrun --nproc_per_node=N -m core.train --config ...    (DDP: gloo on CPU, nccl on CUDA)

The run folder layout is the one of docs/architecture.md. SIGINT / SIGTERM finish the current
step, save the state and exit 0 with status "stopped"; ``--resume`` then continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from core import distributed as ddp
from core.checkpoint import atomic_write, atomic_write_json, remove_stale_temp_files
from core.config import load_config
from core.data.scenes.ensure import prepare_scenes_data, provenance
from core.errors import ArgumentParser, UserError, one_line, run_cli
from core.optim import WarmupPoly, build_optimizer
from core.precision import resolve_precision
from core.runstate import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    STATE_FILE,
    capture_rng,
    checkpoint_step,
    load_train_state,
    preserve_rng,
    read_train_state_info,
    restore_rng,
    save_model_checkpoint,
    save_train_state,
    seed_everything,
    write_status,
)

SAMPLE_KEYS = ("cam_label", "par_label", "aff_label", "seg_pred")
# Resumed with another number of processes, the saved random streams do not fit: rank r reseeds
# from seed + RESEED_RANK_STRIDE * r + step, its own stream (a prime stride, larger than the
# ranks ever used) that also differs from the stream of a resume at another step.
RESEED_RANK_STRIDE = 7919


# ---------------------------------------------------------------- small helpers around the loop
def _quiet_worker(_worker_id: int) -> None:
    """Data workers leave SIGINT / SIGTERM to the main process: Ctrl-C reaches the whole process
    group, and a worker dying of it would turn a clean stop-and-save into a crash."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BatchStream:
    """Endless batches; ``epoch`` and ``position`` (batches consumed in the epoch) say where it is."""

    def __init__(self, dataset: Any, sampler: ddp.EpochBatchSampler, num_workers: int, pin: bool,
                 epoch: int, position: int, seed: int):
        self.dataset, self.sampler = dataset, sampler
        self.epoch, self.position = epoch, position
        # own generator: creating an iterator must not draw from the global RNG (exact resume)
        self.loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                                 generator=torch.Generator().manual_seed(seed), worker_init_fn=_quiet_worker)
        self.iterator = None

    def __next__(self) -> dict:
        if self.iterator is None or self.position >= self.sampler.batches_per_epoch:
            if self.position >= self.sampler.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch, self.position)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.iterator = iter(self.loader)
        batch = next(self.iterator)
        self.position += 1
        return batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


class RunLog:
    """metrics.jsonl, status.json, TensorBoard and the console; writes only on rank 0."""

    def __init__(self, run_dir: Path, max_iters: int, enabled: bool, start_step: int):
        self.run_dir, self.max_iters, self.enabled = run_dir, max_iters, enabled
        self.last_step = start_step
        self.bar = self.tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass
        from tqdm import tqdm
        self.bar = tqdm(total=max_iters, initial=start_step, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def status(self, state: str, step: int, message: str = "") -> None:
        self.last_step = step
        if self.enabled:
            write_status(self.run_dir, state, step, self.max_iters, message)

    def metrics(self, line: dict) -> None:
        if not self.enabled:
            return
        line = _finite(line)
        with open(self.run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.tb is not None:
            prefix = line["kind"]
            for key, value in line.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, line["step"])
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{prefix}/{key}/{sub}", v, line["step"])

    def console(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def advance(self, step: int, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def forget_after(self, step: int) -> None:
        """On resume: drop metrics lines of steps after the saved state (they will be redone)."""
        path = self.run_dir / METRICS_FILE
        if not self.enabled or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a crash
                continue
        atomic_write(path, lambda p: p.write_text("".join(kept)))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def save_samples(path: Path, batch: dict, labels: dict, limit: int = 4) -> None:
    """samples/latest.npz: the batch's images (n, H, W, 3) uint8 and its label maps (n, H, W) uint8."""
    arrays = {"image": batch["image_raw"][:limit].detach().permute(0, 2, 3, 1).clamp(0, 255)
              .round().to(torch.uint8).cpu().numpy()}
    for key in SAMPLE_KEYS:
        if labels.get(key) is not None:
            arrays[key] = labels[key][:limit].detach().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(path, write)


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively (metrics.jsonl stays strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def mean_logs(history: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per key, the mean of the finite values (None when there is none: JSON has no NaN)."""
    keys = sorted({k for logs in history for k in logs})
    out: dict[str, float | None] = {}
    for k in keys:
        values = [_num(logs.get(k)) for logs in history]
        finite = [v for v in values if np.isfinite(v)]
        out[k] = float(np.mean(finite)) if finite else None
    return out


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order: equal on all DDP replicas when in sync."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StopSignal:
    """SIGINT / SIGTERM set a flag; the loop saves and exits after the current step (a second
    Ctrl-C interrupts at once, without saving)."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: leave now, unsaved
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the run
def check_train_config(cfg: dict) -> None:
    t = cfg["train"]
    if not isinstance(t["log_every"], int) or t["log_every"] < 1:
        raise UserError(f"train.log_every must be a positive integer, got {t['log_every']!r}")
    for key in ("eval_every", "save_every", "eval_limit", "stop_after"):
        if t[key] is not None and (not isinstance(t[key], int) or t[key] < 0):
            raise UserError(f"train.{key} must be a non-negative integer or null, got {t[key]!r}")


def setup_run(args: Any) -> tuple[dict, Path | None, bool]:
    """The resolved config, the run folder (None: pick a new one) and whether this resumes it."""
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"cannot resume {run_dir}: no such folder")
        read_train_state_info(run_dir)  # a run folder with a complete training state, or a UserError
        cfg = load_config(run_dir / CONFIG_FILE, args.overrides)
        check_train_config(cfg)
        return cfg, run_dir, True
    if not args.config:
        raise UserError("pass --config FILE (or --resume RUN_DIR)")
    cfg = load_config(args.config, args.overrides)
    check_train_config(cfg)
    return cfg, Path(args.run_dir) if args.run_dir else None, False


def holds_run(run_dir: Path) -> bool:
    return (run_dir / STATE_FILE).exists() or (run_dir / METRICS_FILE).exists()


def new_run_dir(cfg: dict, config_path: str, run_dir: Path | None) -> Path:
    """``run_dir`` or ``train.out_dir/<config>-<time>`` (rank 0's name on every rank); never a used one."""
    if run_dir is None:
        name = f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg["train"]["out_dir"]) / ddp.broadcast_json(name)
    if holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                        "or pick another folder")
    return run_dir


def train(cfg: dict, run_dir: Path, resume: bool, info: ddp.DistInfo, device: torch.device,
          log: RunLog) -> str:
    """Train until ``train.max_iters`` (-> "finished") or a stop request (-> "stopped")."""
    from core.data import build_dataset, class_names
    from core.evaluate import evaluate_model, summary
    from core.models.registry import create_model
    from core.step import training_step

    t = cfg["train"]
    seed = int(t["seed"])
    seed_everything(seed)

    # ---- data: the order is a pure function of (seed, epoch); each rank reads its own shard
    train_set = build_dataset(cfg, cfg["data"]["train_split"], train=True)
    val_set = build_dataset(cfg, cfg["data"]["val_split"], train=False) if t["eval_every"] else None
    sampler = ddp.EpochBatchSampler(len(train_set), t["batch_size"], seed, info.rank, info.world_size)

    # ---- model and optimiser
    model = create_model(cfg, classes=class_names(cfg)).to(device)
    model.meta = {"config": cfg}  # core.analyze (evaluation) reads the method settings from here
    model.data_provenance = provenance(getattr(train_set, "meta", {}))  # recorded in every checkpoint
    if model.data_provenance:
        scenes = model.data_provenance["scenes"]
        log.console(f"data: {cfg['data']['root']} ({model.data_provenance['source']} items, "
                    f"{scenes['train']} train + {scenes['val']} val images)")
    optimizer = build_optimizer(model, cfg["optim"])
    schedule = WarmupPoly.from_config(cfg)
    precision = resolve_precision(t["precision"], device)  # the step autocasts its model passes
    use_scaler = precision.grad_scaler  # fp16 only: bf16 and fp32 gradients do not underflow
    log.console(f"precision: {precision.name} (train.precision={t['precision']})")
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    step, epoch, position, metrics = 0, 0, 0, None
    if resume:
        state = load_train_state(run_dir)
        try:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"cannot resume {run_dir}: its saved state does not fit the model and optimiser "
                            "of the config (did an override change model.* or optim.*?)") from exc
        if state.scaler and use_scaler:
            scaler.load_state_dict(state.scaler)
        step, epoch, position = state.step, state.epoch, state.position
        metrics = state.meta.get("metrics")
        if len(state.rng) == info.world_size:
            restore_rng(state.rng[info.rank])
        else:
            log.console(f"note: resumed with {info.world_size} processes instead of {len(state.rng)}; "
                        "random streams are reseeded, so the run is no longer bit-identical")
            seed_everything(seed + RESEED_RANK_STRIDE * info.rank + step)
        if info.is_main and checkpoint_step(run_dir / CHECKPOINT_FILE) != step:  # crashed between writes
            save_model_checkpoint(run_dir / CHECKPOINT_FILE, model, cfg, step, metrics)
        log.forget_after(step)
        log.advance(step)
    else:
        seed_everything(seed + info.rank)  # same initial weights on every rank, own dropout streams
    net = model
    if info.enabled:  # some heads get no gradient in some steps (decoder before cam_iters; cam mode)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    batches = BatchStream(train_set, sampler, int(cfg["data"]["num_workers"]), device.type == "cuda",
                          epoch, position, seed)

    def save(step: int) -> None:
        rng = ddp.gather_json(capture_rng())  # every rank takes part
        if info.enabled:  # replicas must hold the same parameters; record the evidence
            digests = ddp.gather_json(parameter_digest(model))
            if info.is_main:
                atomic_write_json(run_dir / "replicas.json", {"step": step, "digests": digests,
                                                              "identical": len(set(digests)) == 1})
                if len(set(digests)) != 1:
                    log.console(f"warning: DDP replicas differ at step {step}")
        if info.is_main:
            save_train_state(run_dir, model=model, optimizer=optimizer, step=step, epoch=batches.epoch,
                             position=batches.position, rng=rng,
                             scaler_state=scaler.state_dict() if use_scaler else None,
                             extra={"metrics": metrics})
            save_model_checkpoint(run_dir / CHECKPOINT_FILE, model, cfg, step, metrics)
        ddp.barrier()

    def evaluate(step: int) -> dict:
        with preserve_rng():
            result = evaluate_model(model, val_set, cfg, limit=t["eval_limit"], crf=bool(t["eval_crf"]),
                                    rank=info.rank, world_size=info.world_size, precision=precision)
        if info.is_main:
            atomic_write_json(run_dir / "eval" / f"step_{step:06d}.json", {"step": step, **result})
            log.metrics({"kind": "eval", "step": step, "time": time.time(), **summary(result)})
            scores = ", ".join(f"{k} {_num(v['miou']):.3f}" for k, v in result["stages"].items())
            log.console(f"eval @ {step}: {scores}")
        return {"step": step, **summary(result)}

    # ---- the loop
    max_iters, stop_after = int(t["max_iters"]), t["stop_after"]
    history: list[dict[str, float]] = []
    step_times: list[float] = []
    log.status("running", step)
    with StopSignal() as stop:
        while step < max_iters:
            started = time.perf_counter()
            batch = to_device(next(batches), device)
            schedule.apply(optimizer, step)
            model.train()
            result = training_step(net, batch, cfg, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            history.append(dict(result.logs))
            step_times.append(time.perf_counter() - started)  # data + step + update; not eval / save

            if step % t["log_every"] == 0 or step == max_iters:
                logs = mean_logs(ddp.gather_json(mean_logs(history)))  # mean over steps, then ranks
                step_time = float(np.mean(step_times))
                line = {"kind": "train", "step": step, "time": time.time(),
                        "lr": optimizer.param_groups[0]["lr"], **logs, "step_time": step_time,
                        "images_per_s": t["batch_size"] * info.world_size / step_time}
                log.metrics(line)
                if info.is_main:
                    save_samples(run_dir / SAMPLES_FILE, batch, result.labels)
                log.console(f"step {step}/{max_iters}  loss {_num(logs.get('loss')):.4f}  "
                            f"lr {line['lr']:.2e}  {step_time:.3f} s/step")
                log.status("running", step)
                history, step_times = [], []
            log.advance(step, float(result.logs.get("loss", result.loss.item())))

            if val_set is not None and (step % t["eval_every"] == 0 or step == max_iters):
                metrics = evaluate(step)
            stopping = ddp.any_flag(stop.requested or step == stop_after)
            if step == max_iters or stopping or (t["save_every"] and step % t["save_every"] == 0):
                save(step)
            if stopping and step < max_iters:
                log.status("stopped", step, "stopped on request; continue with --resume")
                return "stopped"
    log.status("finished", step)
    return "finished"


def parse_args(argv: list[str] | None) -> Any:
    p = ArgumentParser(prog="python -m core.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config (core/configs/*.yaml)")
    p.add_argument("--run-dir", help="run folder (default: train.out_dir/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder exactly")
    p.add_argument("--make-data", action="store_true",
                   help="generate the scenes benchmark first when data.root is missing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when finished or stopped, 2 (one line on stderr) for bad input; a bug raises."""
    return run_cli(lambda: _main(argv), "python -m core.train")


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    info = ddp.env_info()
    # where a failure is reported: only into the run folder the user named with --run-dir (the app
    # makes it and reads the status), a run being resumed, or the folder this start created; never
    # into a folder that holds another run or that --resume wrongly names
    status_dir = Path(args.run_dir) if args.run_dir and not args.resume else None
    if status_dir is not None and holds_run(status_dir):
        status_dir = None
    run_dir: Path | None = None
    log: RunLog | None = None
    max_iters_hint = 0
    try:
        cfg, run_dir, resume = setup_run(args)
        if resume:
            status_dir = run_dir
        info, device = ddp.init_distributed(cfg["train"]["device"])
        if not resume:
            run_dir = new_run_dir(cfg, args.config, run_dir)  # refuses a folder that holds a run
        prepare_scenes_data(cfg, args.make_data, new_run=not resume)  # before the run folder is made
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            status_dir = run_dir
            remove_stale_temp_files(run_dir)  # left by a kill -9 during a save of this run
            atomic_write(run_dir / CONFIG_FILE,
                         lambda p: p.write_text(yaml.safe_dump(cfg, sort_keys=False)))
        max_iters_hint = cfg["train"]["max_iters"]
        log = RunLog(run_dir, max_iters_hint, info.is_main, 0)
        state = train(cfg, run_dir, resume, info, device, log)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        if status_dir is not None and info.is_main and status_dir.is_dir():
            write_status(status_dir, "failed", log.last_step if log else 0, max_iters_hint, one_line(exc))
        raise
    except Exception as exc:  # a bug: recorded in the run, then raised with its traceback
        if status_dir is not None and info.is_main and status_dir.is_dir():
            write_status(status_dir, "failed", log.last_step if log else 0, max_iters_hint,
                         f"{type(exc).__name__}: {one_line(exc)}")
        raise
    finally:
        if log is not None:
            log.close()
        ddp.cleanup()
    log.console(f"{state}: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
