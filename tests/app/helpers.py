"""Helpers of the app tests: well-shaped random analyses, a fake core backend, checkpoints."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.analyze import Analysis, BlockAttention  # noqa: E402

CLASSES = ["background", "cat", "dog", "car", "tree"]


def make_analysis(
    image: np.ndarray | None = None,
    size: tuple[int, int] = (96, 128),
    grid: tuple[int, int] = (6, 8),
    labels=None,
    crf: bool = False,
    attention: bool = True,
    classes=CLASSES,
    seed: int = 0,
) -> Analysis:
    """A random but well-shaped ``Analysis`` (the fields core.analyze fills)."""
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    present = (
        np.array(sorted(classes.index(n) for n in labels), dtype=np.int64)
        if labels is not None
        else np.array([1, 3], dtype=np.int64)
    )
    c = len(classes)
    cam = np.zeros((c - 1, h, w), dtype=np.float32)
    for k in present:
        cam[k - 1] = rng.random((h, w), dtype=np.float32)
    ids = np.concatenate([[0], present]).astype(np.uint8)

    def label():
        out = ids[rng.integers(0, len(ids), size=(h, w))]
        out[:2, :2] = 255
        return out

    n = grid[0] * grid[1]
    aff = rng.random((n, n), dtype=np.float32)
    aff = (aff + aff.T) / 2
    att = rng.random((n, n), dtype=np.float32)
    att /= att.sum(1, keepdims=True)
    mhsa = (att + att.T) / 2
    blocks = None
    if attention:
        blocks = []
        specs = [  # stage, query grid (x grid), key grid, heads
            (0, (grid[0] * 4, grid[1] * 4), (max(1, grid[0] // 2), max(1, grid[1] // 2)), 1),
            (1, (grid[0] * 2, grid[1] * 2), (max(1, grid[0] // 2), max(1, grid[1] // 2)), 2),
            (2, grid, (max(1, grid[0] // 2), max(1, grid[1] // 2)), 5),
            (3, grid, grid, 8),
            (3, grid, grid, 8),
        ]
        for index, (stage, q, kv, heads) in enumerate(specs):
            a = rng.random((heads, q[0] * q[1], kv[0] * kv[1]), dtype=np.float32)
            a /= a.sum(-1, keepdims=True)
            blocks.append(
                BlockAttention(stage=stage, index=index, grid=q, kv_grid=kv, attn=a.astype(np.float16))
            )
    steps = rng.random((11, len(ids), h, w), dtype=np.float32).astype(np.float16)
    seg = label()
    scores = np.full(c - 1, 0.1, dtype=np.float32)
    scores[present - 1] = 0.9
    return Analysis(
        image=image,
        classes=list(classes),
        present=present,
        scores=scores,
        labels_source="given" if labels is not None else "predicted",
        cam=cam,
        cam_label=label(),
        par_label=label(),
        par_steps=steps,
        par_channels=ids.astype(np.int64),
        affinity=aff if attention else None,
        mhsa=mhsa if attention else None,
        grid=grid if attention else None,
        rw_afa_label=label() if attention else None,
        rw_mhsa_label=label() if attention else None,
        attention=blocks,
        seg_label=seg,
        seg_crf_label=label() if crf else None,
        notes=[],
        timings={"total": 0.01},
        meta={"crf": crf},
    )


class FakeModel:
    def __init__(self, kind, classes=CLASSES):
        self.kind = kind
        self.classes = list(classes)
        self.meta = {}


class FakeBackend:
    """Stands in for core: records calls; ``fail_read`` / ``fail_analyze`` / ``crf_error`` inject errors,
    ``crf_installed = False`` says pydensecrf is missing."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "ckpts"
        self.dir.mkdir()
        for name in ("afa_fake.safetensors", "cnn_cam_fake.safetensors"):
            (self.dir / name).write_bytes(b"x")
        self.analyze_calls: list[dict] = []
        self.dense_calls: list[bool] = []
        self.fail_read: Exception | None = None
        self.fail_analyze: Exception | None = None
        self.crf_error: Exception | None = None
        self.crf_installed = True
        self.attention = True

    def read_image(self, source, max_side):
        if self.fail_read is not None:
            raise self.fail_read
        if isinstance(source, np.ndarray):
            return source, []
        from PIL import Image

        return np.asarray(Image.open(source).convert("RGB")), ["read by the fake"]

    def read_meta(self, path):
        kind = "cnn_cam" if "cnn" in Path(path).name else "afa"
        return {"model": {"name": kind, "backbone": "fake"}, "classes": CLASSES}

    def load_model(self, path):
        return FakeModel("cnn_cam" if "cnn" in Path(path).name else "afa")

    def analyze(self, model, image, labels, crf, dense=True):
        self.analyze_calls.append({"kind": model.kind, "labels": labels, "crf": crf})
        self.dense_calls.append(dense)
        if self.fail_analyze is not None:
            raise self.fail_analyze
        if crf and self.crf_error is not None:
            raise self.crf_error
        cnn = model.kind == "cnn_cam"
        grid = (max(2, image.shape[0] // 16), max(2, image.shape[1] // 16))
        return make_analysis(
            image, grid=grid, labels=labels, crf=crf, attention=self.attention and not cnn, seed=1 + cnn
        )

    def add_crf(self, analysis):
        import dataclasses

        self.analyze_calls.append({"kind": "add_crf", "labels": None, "crf": True})
        if self.crf_error is not None:
            raise self.crf_error
        crf_label = ((analysis.seg_label.astype(int) + 1) % len(analysis.classes)).astype(np.uint8)
        return dataclasses.replace(analysis, seg_crf_label=crf_label)

    def discover(self, include_runs=True):
        from app.backend import describe_checkpoint

        return [describe_checkpoint(p, self.read_meta(p)) for p in sorted(self.dir.glob("*.safetensors"))]

    def core_available(self):
        return True

    def crf_available(self):
        return self.crf_installed


# ------------------------------------------------------------------------------------------------
# the real app in a subprocess (slow tests)


def core_ready() -> str:
    """'' if core.analyze / core.load_model are usable, else the reason to skip."""
    try:
        import core

        if not (callable(getattr(core, "analyze", None)) and callable(getattr(core, "load_model", None))):
            return "core.analyze / core.load_model do not exist yet"
    except Exception as exc:  # noqa: BLE001
        return f"core cannot be imported ({exc})"
    return ""


def shipped_checkpoints() -> bool:
    from core.checkpoint import read_meta

    kinds = set()
    for path in (ROOT / "checkpoints").glob("*.safetensors"):
        try:
            kinds.add(read_meta(path)["model"].get("name"))
        except Exception:  # noqa: BLE001
            continue
    return "afa" in kinds


def random_checkpoints(folder: Path) -> None:
    """Tiny randomly initialised checkpoints (scenes classes) for when none are shipped yet."""
    import torch

    from core.checkpoint import save_checkpoint
    from core.config import DEFAULTS
    from core.models.registry import create_model

    classes = "background tshirt trouser pullover dress coat sandal shirt sneaker bag boot".split()
    folder.mkdir(parents=True, exist_ok=True)
    for kind, backbone in (("afa", "mit_b0"), ("cnn_cam", "resnet18")):
        cfg = {"name": kind, "backbone": backbone, "num_classes": len(classes), "pretrained": None}
        torch.manual_seed(0)
        model = create_model({"model": cfg}, classes=classes)
        meta = {
            "model": cfg,
            "classes": classes,
            "mean": DEFAULTS["data"]["mean"],
            "std": DEFAULTS["data"]["std"],
            "step": 0,
        }
        save_checkpoint(folder / f"{kind}_random_{backbone}.safetensors", model.state_dict(), meta)


def make_tiny_checkpoints(folder: Path, dataset: Path, seeds=(0, 1)) -> Path:
    """Tiny random AFA checkpoints (core/configs/tiny.yaml) of ``dataset``'s classes, one per seed:
    ``tiny_afa_s<seed>.safetensors`` (a name the pickers list after ``afa_*``, the shipped ones)."""
    import torch

    from core.config import load_config
    from core.data import class_names
    from core.models.registry import create_model
    from core.runstate import save_model_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / "core" / "configs" / "tiny.yaml", [f"data.root={dataset}"])
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model(cfg, classes=class_names(cfg))
        save_model_checkpoint(folder / f"tiny_afa_s{seed}.safetensors", model, cfg, step=seed)
    return folder


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: list[str], *, cwd: Path, env: dict, log_path: Path, port: int,
              timeout: float) -> tuple[subprocess.Popen, str]:
    """``python ARGS`` (an app.py command line listening on ``port``) with its output in
    ``log_path``; returns ``(process, url)`` once the page answers. If the app exits or does not
    answer within ``timeout`` seconds it is stopped and RuntimeError carries the log's tail."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # closed by stop_app
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            stop_app(proc)
            raise RuntimeError(f"the app exited: {log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline:
                stop_app(proc)
                raise RuntimeError(f"the app did not start within {timeout:.0f} s: "
                                   f"{log_path.read_text()[-3000:]}") from None
            time.sleep(0.5)


def stop_app(proc: subprocess.Popen) -> None:
    """SIGTERM (the app saves and stops its runs), then kill after 20 s; close its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()


def copy_finished_runs(source: Path, target: Path, limit: int = 5) -> None:
    """Copy the small files of finished / stopped runs (no checkpoints) into ``target``."""
    import json
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for run in sorted(source.iterdir())[:limit]:
        try:
            state = json.loads((run / "status.json").read_text()).get("state")
        except (OSError, ValueError):
            continue
        if state not in ("finished", "stopped"):
            continue
        for name in ("status.json", "metrics.jsonl", "config.yaml", "train.log", "samples/latest.npz"):
            if (run / name).is_file():
                (target / run.name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / name, target / run.name / name)


CHROMIUM = os.environ.get("AFA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_browser():
    """Debian's chromium, headless, driven by Playwright; skips the test when either is missing."""
    import pytest

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (install Debian's chromium package or set AFA_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
