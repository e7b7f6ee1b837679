"""The scenes data a run started from the Train tab needs, generated as part of Start when missing.

Locally the run uses the canonical benchmark at its config's ``data.root`` (``data/scenes``, what
``python -m core.data.scenes --out data/scenes`` writes), generated there on the first Start. In
public mode (a Space) it uses that folder if the Space has it; otherwise a small demo set with the
canonical settings (``AFA_APP_PUBLIC_SCENES`` train and val images, default 240 + 60) in a folder of
its own, ``data/scenes-demo``, so it is never taken for the benchmark. Without the Fashion-MNIST
files, core's procedural items stand in, in ``...-procedural`` (see ``core.data.scenes.ensure``),
and the Start message says so in one line.

Generation happens under core's dataset lock (two Starts never generate at once; the second finds
the data done) and into a temporary folder renamed at the end (a half-written set is never used).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.runs import ROOT
from core.config import load_config
from core.data.scenes import DEFAULT_TRAIN, DEFAULT_VAL, ScenesReady, ensure_scenes, is_complete
from core.errors import UserError

DEMO_SUFFIX = "-demo"
PROGRESS_EVERY = 0.25  # seconds between two progress updates


def public_scenes_size() -> tuple[int, int]:
    """``(train, val)`` images of the public demo set: ``AFA_APP_PUBLIC_SCENES=TRAIN,VAL``."""
    text = os.environ.get("AFA_APP_PUBLIC_SCENES", "240,60")
    try:
        n_train, n_val = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"AFA_APP_PUBLIC_SCENES must be TRAIN,VAL (two integers), not {text!r}") from exc
    if n_train < 1 or n_val < 1:
        raise UserError(f"AFA_APP_PUBLIC_SCENES needs at least one train and one val image, not {text!r}")
    return n_train, n_val


def scenes_plan(data_root: str, public: bool, root: Path = ROOT) -> tuple[Path, int, int]:
    """``(folder, train images, val images)`` a run on ``data_root`` (a config's, relative to
    ``root``) will use, generated if missing: the canonical benchmark locally; in public mode,
    the canonical folder if present, else the small demo set beside it."""
    canonical = Path(data_root) if Path(data_root).is_absolute() else root / data_root
    if not public or is_complete(canonical):
        return canonical, DEFAULT_TRAIN, DEFAULT_VAL
    n_train, n_val = public_scenes_size()
    return canonical.with_name(canonical.name + DEMO_SUFFIX), n_train, n_val


def procedural_note(ready: ScenesReady) -> str:
    classes = ", ".join(ready.meta.get("classes", [])[1:]) or "shapes"
    return (
        "Fashion-MNIST is not installed on this server, so the data uses procedural shapes "
        f"({classes}) instead of clothes."
    )


def prepare_scenes(
    config: str | Path,
    overrides: list[str],
    public: bool,
    progress: Callable[..., Any] | None = None,
    root: Path = ROOT,
) -> tuple[list[str], list[str]]:
    """Make sure the scenes data of ``config`` + ``overrides`` exists (see the module docstring).
    Returns ``(overrides, notes)``: ``data.root`` of the folder to train on, and one-line notes
    for the Start message (generated how many images, procedural items). Other datasets: nothing.

    ``progress(fraction, desc=...)`` is Gradio's tracker (or anything with that call)."""
    cfg = load_config(Path(root) / config, overrides)
    if cfg["data"]["name"] != "scenes":
        return [], []
    target, n_train, n_val = scenes_plan(str(cfg["data"]["root"]), public, root)

    shown = [0.0]

    def report(done: int, total: int) -> None:
        # a few updates a second: each one is a message to the browser
        if progress is None or (done < total and done > 1 and time.monotonic() - shown[0] < PROGRESS_EVERY):
            return
        shown[0] = time.monotonic()
        progress(
            (done, total),
            desc=f"Generating the scenes data ({total} images, once per server)",
            unit="images",
        )

    start = time.perf_counter()
    ready = ensure_scenes(target, n_train, n_val, progress=report)
    notes = []
    if ready.replaced is not None:
        notes.append(
            f"{_shown(ready.root, root)} held an older version of the scenes benchmark: "
            f"moved to {_shown(ready.replaced, root)}"
        )
    if ready.generated:
        notes.append(
            f"generated {ready.images} scenes images into {_shown(ready.root, root)} "
            f"in {time.perf_counter() - start:.0f} s"
        )
    if ready.source == "procedural":
        notes.append(procedural_note(ready))
    return [f"data.root={_shown(ready.root, root)}"], notes


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the app root when inside it (what the trainer, run there, reads)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
