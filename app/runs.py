"""The run manager: start ``core.train`` as a separate process, stop it, resume it, and read
the run folders it writes (their file names, resumability and headline mIoU come from core).

One run per device at a time: a lock file ``runs/.lock-<device>.json`` holds the pid of the
running trainer; a second Start is refused while that pid is alive. A Start that first prepares
its data (``start(..., prepare=...)``: generating the scenes benchmark) holds the lock from the
beginning, with the app's pid as its owner, so a second Start meanwhile is refused the same way.
A run whose status says "running" but whose process is gone is reported as dead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.checkpoint import read_meta
from core.config import load_config
from core.data import class_names
from core.errors import UserError
from core.evaluate import headline_miou
from core.runstate import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    can_resume,
)

ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TERMINAL_STATES = ("finished", "stopped", "failed")
PREPARE_TIMEOUT = 3600.0  # a lock held this long by a Start still preparing its data is stale
LOG_FILE = "train.log"  # the trainer's console output, written by the app that started it


class RunError(UserError):
    """A run action that was refused; the message says why."""


@dataclass
class RunInfo:
    name: str
    path: Path
    state: str  # preparing | starting | running | stopping | finished | stopped | failed | dead | unknown
    step: int = 0
    max_iters: int = 0
    message: str = ""
    pid: int | None = None
    updated: float = 0.0
    last_loss: float | None = None
    best_miou: tuple[str, float] | None = None  # (stage, fraction) of core.evaluate.headline_miou
    has_checkpoint: bool = False
    can_resume: bool = False  # core.runstate.can_resume, and not finished or still active
    status: dict = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.max_iters) if self.max_iters else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("preparing", "running", "starting", "stopping")


def default_device() -> str:
    """The device the trainer will pick: one lock per device."""
    forced = os.environ.get("AFA_TRAIN_DEVICE")
    if forced:
        return forced
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def pid_alive(pid: int | None, must_contain: str = "") -> bool:
    """True if a (non-zombie) process with this pid exists and, where /proc tells, its command
    line mentions ``must_contain`` (guards against a recycled pid)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if must_contain:
            return must_contain in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        pass
    return True


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path, limit: int = 20000) -> list[dict]:
    """Lines of ``metrics.jsonl``; a half-written last line (the trainer is appending) is skipped."""
    records: list[dict] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        return []
    return records[-limit:]


class RunManager:
    """Starts and watches training processes. Thread-safe: every Gradio session shares one."""

    def __init__(
        self,
        root: Path = ROOT,
        runs_dir: Path | None = None,
        trainer: list[str] | None = None,
        config: str = "core/configs/scenes.yaml",
        device: str | None = None,
        stop_grace: float = 30.0,
    ):
        self.root = Path(root)
        if runs_dir is None:
            from app.backend import runs_dir as configured_runs_dir

            runs_dir = configured_runs_dir()
        self.runs_dir = Path(runs_dir)
        self.trainer = trainer or [sys.executable, "-m", "core.train"]
        self.config = config
        self.device = device or default_device()
        self.stop_grace = stop_grace
        self._procs: dict[str, subprocess.Popen] = {}
        self._stop_requested: dict[str, float] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- lock file
    @property
    def lock_path(self) -> Path:
        return self.runs_dir / f".lock-{re.sub(r'[^A-Za-z0-9_-]', '_', self.device)}.json"

    def _holder(self) -> dict | None:
        """The lock's content if a live process holds it; a stale lock is removed."""
        data = read_json(self.lock_path)
        if data is None:
            if self.lock_path.exists():
                try:  # unreadable: left half-written by a crash
                    if time.time() - self.lock_path.stat().st_mtime > 5:
                        self.lock_path.unlink()
                except OSError:
                    pass
                else:
                    return None
            return None
        if self._alive(data.get("run", ""), data.get("pid")) or self._preparing(data):
            return data
        self._release(data.get("pid"))
        return None

    @staticmethod
    def _preparing(lock: dict) -> bool:
        """True for the lock of a Start still preparing its data (no trainer yet) whose app
        process is alive."""
        return (
            lock.get("pid") is None
            and pid_alive(lock.get("owner"))
            and time.time() - float(lock.get("started") or 0) < PREPARE_TIMEOUT
        )

    def _acquire(self, run: str) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        holder = self._holder()
        if holder is not None and holder.get("pid") is None:
            raise RunError(
                f"Run '{holder.get('run')}' is about to train on {self.device} (its data is being prepared); "
                "one run per device at a time."
            )
        if holder is not None:
            raise RunError(
                f"Run '{holder.get('run')}' is already training on {self.device} (pid {holder.get('pid')}); "
                "stop it first: one run per device at a time."
            )
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as exc:  # another session won the race
            raise RunError("Another run is starting on this device; one run per device at a time.") from exc
        with os.fdopen(fd, "w") as fh:
            # the app owns the lock until the trainer's pid replaces it (``_write_lock``)
            lock = {"run": run, "pid": None, "owner": os.getpid(), "device": self.device}
            json.dump({**lock, "started": time.time()}, fh)

    def _write_lock(self, run: str, pid: int) -> None:
        tmp = self.lock_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run": run, "pid": pid, "device": self.device, "started": time.time()}))
        os.replace(tmp, self.lock_path)

    def _release(self, pid: int | None = None) -> None:
        data = read_json(self.lock_path)
        if data is not None and pid is not None and data.get("pid") not in (pid, None):
            return  # someone else's lock by now
        try:
            self.lock_path.unlink()
        except FileNotFoundError:
            pass

    # ---------------------------------------------------------------- processes
    def _alive(self, run: str, pid: int | None) -> bool:
        proc = self._procs.get(run)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None  # poll() also reaps our own finished child
        return pid_alive(pid, must_contain=run)

    def _spawn(self, run: str, args: list[str]) -> int:
        run_dir = self.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(run_dir / LOG_FILE, "ab")
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n".encode())
        log_file.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen(
                self.trainer + args,
                cwd=self.root,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._release()
            raise RunError(f"Could not start the trainer: {exc}") from exc
        finally:
            log_file.close()
        self._procs[run] = proc
        self._write_lock(run, proc.pid)
        return proc.pid

    # ---------------------------------------------------------------- actions
    def run_dir(self, name: str) -> Path:
        if not NAME_RE.match(name or ""):
            raise RunError("A run name uses letters, digits, '-', '_' or '.', up to 64 characters.")
        return self.runs_dir / name

    def start(
        self,
        name: str,
        overrides: list[str],
        config: str | None = None,
        prepare: Callable[[], list[str]] | None = None,
    ) -> RunInfo:
        """Start ``core.train`` for a new run folder. Refused if a run is active on this device.

        ``prepare()`` runs after the device is taken and before the trainer starts (it may take
        minutes: generating the data); it returns more overrides. If it fails, the device is
        freed and nothing of the run is left behind."""
        with self._lock:
            run_dir = self.run_dir(name)
            if run_dir.exists() and any(run_dir.iterdir()):
                raise RunError(f"A run named '{name}' exists already; resume it or choose another name.")
            self._acquire(name)
        try:
            extra = list(prepare()) if prepare is not None else []
        except BaseException:
            self._release()
            raise
        with self._lock:
            args = [
                "--config",
                config or self.config,
                "--run-dir",
                str(run_dir.relative_to(self.root) if run_dir.is_relative_to(self.root) else run_dir),
                *overrides,
                *extra,
            ]
            self._spawn(name, args)
            self._stop_requested.pop(name, None)
            return self.info(name)

    def resume(self, name: str) -> RunInfo:
        with self._lock:
            run_dir = self.run_dir(name)
            info = self.info(name)
            if info.active:
                raise RunError(f"Run '{name}' is still {info.state}.")
            if not run_dir.is_dir():
                raise RunError(f"There is no run named '{name}'.")
            if info.state == "finished":
                raise RunError(f"Run '{name}' has finished; start a new run to train longer.")
            if not info.can_resume:
                raise RunError(f"Run '{name}' saved no training state that can be resumed.")
            self._acquire(name)
            rel = run_dir.relative_to(self.root) if run_dir.is_relative_to(self.root) else run_dir
            self._spawn(name, ["--resume", str(rel)])
            self._stop_requested.pop(name, None)
            return self.info(name)

    def stop(self, name: str, force: bool = False) -> str:
        """SIGTERM (the trainer saves a checkpoint and exits); SIGKILL if ``force`` or if asked
        again after ``stop_grace`` seconds."""
        with self._lock:
            info = self.info(name)
            if not info.active or info.pid is None:
                return f"Run '{name}' is not running ({info.state})."
            first = self._stop_requested.get(name)
            kill = force or (first is not None and time.time() - first > self.stop_grace)
            sig = signal.SIGKILL if kill else signal.SIGTERM
            try:
                os.killpg(info.pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(info.pid, sig)
                except ProcessLookupError:
                    return f"Run '{name}' had already exited."
            self._stop_requested.setdefault(name, time.time())
            if kill:
                return f"Run '{name}' killed (pid {info.pid}); the last saved checkpoint is kept."
            return f"Stopping '{name}': the trainer saves a checkpoint and exits."

    # ---------------------------------------------------------------- reading
    def info(self, name: str) -> RunInfo:
        run_dir = self.run_dir(name)
        status = read_json(run_dir / STATUS_FILE) or {}
        holder = read_json(self.lock_path) or {}
        proc = self._procs.get(name)
        pid = status.get("pid") or (holder.get("pid") if holder.get("run") == name else None)
        if proc is not None and holder.get("run") == name:
            pid = proc.pid
        alive = self._alive(name, pid) if pid else False
        if proc is not None and not alive:
            self._procs.pop(name, None)
        state = str(status.get("state") or "unknown")
        message = str(status.get("message") or "")
        preparing = not status and holder.get("run") == name and self._preparing(holder)
        if preparing:
            state, message = "preparing", "Preparing the data this run needs; training starts next."
        elif state == "running" and not alive:
            state = "dead"
            message = (
                f"The training process (pid {pid}) is gone while its status says running: it was killed "
                "or crashed. See train.log; Resume continues from the last saved checkpoint."
            )
        elif not status and alive:
            state = "starting"
        elif not status and (run_dir / LOG_FILE).exists() and not alive:
            state, message = "failed", "The trainer exited before writing its status; see train.log."
        elif state in TERMINAL_STATES and alive:
            state = "stopping"
        elif state == "running" and name in self._stop_requested:
            state = "stopping"
        if not alive and not preparing and holder.get("run") == name:
            self._release(holder.get("pid"))
        if not alive:
            self._stop_requested.pop(name, None)
        info = RunInfo(
            name=name,
            path=run_dir,
            state=state,
            step=int(status.get("step") or 0),
            max_iters=int(status.get("max_iters") or 0),
            message=message,
            pid=pid,
            updated=float(status.get("updated") or _mtime(run_dir / STATUS_FILE)),
            status=status,
            has_checkpoint=(run_dir / CHECKPOINT_FILE).is_file(),
        )
        info.can_resume = not info.active and state != "finished" and can_resume(run_dir)
        records = read_metrics(run_dir / METRICS_FILE)
        losses = [r["loss"] for r in records if r.get("kind", "train") == "train" and _number(r.get("loss"))]
        info.last_loss = float(losses[-1]) if losses else None
        mious = [headline_miou(r.get("miou")) for r in records if r.get("kind") == "eval"]
        info.best_miou = max((m for m in mious if m is not None), key=lambda m: m[1], default=None)
        return info

    def list_runs(self) -> list[RunInfo]:
        if not self.runs_dir.is_dir():
            return []
        runs = [
            self.info(p.name)
            for p in self.runs_dir.iterdir()
            if p.is_dir() and NAME_RE.match(p.name) and not p.name.startswith(".")
        ]
        return sorted(runs, key=lambda r: r.updated or _mtime(r.path), reverse=True)

    def active(self) -> RunInfo | None:
        holder = self._holder()
        if holder is None or not holder.get("run"):
            return None
        try:
            return self.info(holder["run"])
        except RunError:
            return None

    def class_names(self, name: str) -> list[str] | None:
        """The run's class names, background first: its checkpoint's, else its dataset's (as core
        reads them from the run's config); None while neither can be read."""
        run_dir = self.run_dir(name)
        try:
            return list(read_meta(run_dir / CHECKPOINT_FILE)["classes"])
        except UserError:
            pass  # no checkpoint yet, or one being written
        try:
            cfg = load_config(run_dir / CONFIG_FILE)
            root = Path(cfg["data"]["root"])
            cfg["data"]["root"] = str(root if root.is_absolute() else self.root / root)  # the trainer's cwd
            return class_names(cfg)
        except UserError:
            return None

    def metrics(self, name: str) -> list[dict]:
        return read_metrics(self.run_dir(name) / METRICS_FILE)

    def samples(self, name: str) -> dict[str, np.ndarray] | None:
        """``samples/latest.npz`` as arrays, or None while it is missing or being rewritten."""
        path = self.run_dir(name) / SAMPLES_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None

    def log_tail(self, name: str, lines: int = 30, max_bytes: int = 20000) -> str:
        path = self.run_dir(name) / LOG_FILE
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signature(self, name: str) -> tuple:
        """Changes whenever something the Train tab shows may have changed."""
        run_dir = self.run_dir(name)
        return tuple(
            _mtime(run_dir / f) for f in (STATUS_FILE, METRICS_FILE, SAMPLES_FILE, LOG_FILE, CHECKPOINT_FILE)
        )

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest inactive runs beyond ``keep`` (public mode keeps the disk bounded)."""
        import shutil

        removed = []
        inactive = [r for r in self.list_runs() if not r.active]
        for run in inactive[keep:]:
            shutil.rmtree(run.path, ignore_errors=True)
            removed.append(run.name)
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
