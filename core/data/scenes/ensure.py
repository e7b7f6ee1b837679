"""Making sure a scenes dataset is there before a run needs it (``core.train --make-data``, the
app's Start button).

``ensure_scenes(root, ...)`` returns at once when ``root`` holds a finished dataset; otherwise it
generates one with the canonical settings (``SceneOptions()``, seed 0) under the writer's lock, so
that two callers at once generate it once: the second waits, then finds it done. A dataset that
older code drew as *its* benchmark (``outdated_benchmark``: another generator version or other
defaults) counts as missing: it is moved aside to ``ROOT.old-TIME`` (kept, not deleted) and the
current benchmark drawn in its place. Where the
Fashion-MNIST files cannot be found it falls back to the procedural items, written to a folder of
their own (``ROOT-procedural``), so that a dataset of shapes is never taken for the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.data.scenes.compose import SceneOptions
from core.data.scenes.sprites import SourceMissing, find_fashion_mnist
from core.data.scenes.writer import (
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    VERSION,
    check_target,
    dataset_lock,
    is_complete,
    load_sets,
    read_meta,
    write_atomically,
)
from core.errors import UserError

PROCEDURAL = "procedural"


def procedural_root(root: str | Path) -> Path:
    """Where the procedural stand-in for the dataset at ``root`` lives: ``ROOT-procedural``."""
    root = Path(root)
    return root.with_name(f"{root.name}-{PROCEDURAL}")


@dataclass(frozen=True)
class ScenesReady:
    """A finished scenes dataset: where it is, its ``meta.json``, whether this call wrote it, and
    where it moved an outdated benchmark that was there (``replaced``)."""

    root: Path
    meta: dict[str, Any]
    generated: bool
    replaced: Path | None = None

    @property
    def source(self) -> str:
        """The item source: "fashion-mnist" or "procedural"."""
        return str(self.meta.get("source", "unknown"))

    @property
    def images(self) -> int:
        return int(self.meta.get("train", 0)) + int(self.meta.get("val", 0))


def ensure_scenes(
    root: str | Path,
    n_train: int = DEFAULT_TRAIN,
    n_val: int = DEFAULT_VAL,
    *,
    fallback_to_procedural: bool = True,
    source: str | Path | None = None,
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> ScenesReady:
    """The scenes dataset at ``root``, generated first if missing (``n_train`` + ``n_val`` images,
    the canonical ``SceneOptions()``); see the module docstring.

    ``source`` is the generator's item source (None: Debian's Fashion-MNIST package, then
    ``data/FashionMNIST/raw``). When it cannot be found and ``fallback_to_procedural``, the
    procedural items are used, in ``procedural_root(root)``; otherwise ``SourceMissing`` (a
    ``UserError`` saying how to get the files) is raised. A finished dataset is used as it is,
    whatever its size or options, unless it is an ``outdated_benchmark`` (moved aside and redrawn):
    this only ever adds what is missing. ``progress(done, total)`` is called as images are
    written; ``log`` gets one line when the fallback is taken or an outdated set is moved aside.
    """
    root = Path(root)
    if is_complete(root):
        meta = read_meta(root)
        if not outdated_benchmark(meta):
            return ScenesReady(root, meta, generated=False)
    target = root
    if source is None or str(source) != PROCEDURAL:
        try:
            find_fashion_mnist(source)
        except SourceMissing:
            if not fallback_to_procedural:
                raise
            target, source = procedural_root(root), PROCEDURAL
            if log is not None:
                log(f"Fashion-MNIST not found: generating procedural items into {target} instead of {root}")
    opts = SceneOptions()
    check_target(target)
    aside = None
    with dataset_lock(target):
        if is_complete(target):  # finished by another caller while this one waited, or earlier
            meta = read_meta(target)
            if not outdated_benchmark(meta):
                return ScenesReady(target, meta, generated=False)
            aside = target.with_name(f"{target.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            target.rename(aside)
            if log is not None:
                log(f"{target} held version {meta.get('version')} of the scenes benchmark, drawn by older "
                    f"code: moved to {aside}; drawing version {VERSION}")
        sets = load_sets(source, seed, opts)
        meta = write_atomically(target, sets, seed, n_train, n_val, opts, progress=progress)
    return ScenesReady(target, meta, generated=True, replaced=aside)


def prepare_scenes_data(cfg: dict[str, Any], make_data: bool, say: Callable[[str], Any] = print,
                        new_run: bool = True) -> None:
    """Before a run (``core.train``): a scenes config whose ``data.root`` is missing, or holds an
    ``outdated_benchmark`` (for a new run; a resumed run keeps the data it began with), either
    gets the benchmark generated (``make_data``; the procedural fallback changes ``data.root`` in
    ``cfg``, which the run's config.yaml then records) or a ``UserError`` naming ``--make-data``."""
    data = cfg["data"]
    if data.get("name") != "scenes":
        return
    root = str(data["root"])
    if Path(root).exists():
        meta = read_meta(root) if is_complete(root) else {}
        if not (new_run and outdated_benchmark(meta)):
            return
        if not make_data:
            raise UserError(
                f"{root} holds version {meta.get('version')} of the scenes benchmark, drawn by older code "
                f"(this code draws version {VERSION}): add --make-data to move it aside and draw the "
                "current one"
            )
    elif not make_data:
        raise UserError(
            f"the scenes dataset {root} does not exist: add --make-data to generate it first (the "
            f"canonical benchmark, {DEFAULT_TRAIN} + {DEFAULT_VAL} images, a few minutes on one core), "
            f"or run python -m core.data.scenes --out {root}"
        )
    say(f"generating the scenes benchmark into {root} (--make-data) ...")
    ready = ensure_scenes(root, DEFAULT_TRAIN, DEFAULT_VAL, log=say)
    data["root"] = str(ready.root)


def benchmark_differences(meta: dict[str, Any]) -> list[str]:
    """Where a dataset's ``meta.json`` differs from the canonical benchmark as the code draws it
    *now* (this generator version, today's ``SceneOptions()`` defaults, the default sizes and
    seed, Fashion-MNIST items), one ``what: DATA, benchmark BENCH`` per difference."""
    options = meta.get("options") if isinstance(meta.get("options"), dict) else {}
    wanted = {"version": VERSION, "source": "fashion-mnist", "train": DEFAULT_TRAIN, "val": DEFAULT_VAL,
              "seed": 0}
    out = [f"{key}: {meta.get(key)!r}, benchmark {value!r}"
           for key, value in wanted.items() if meta.get(key) != value]
    for key, value in asdict(SceneOptions()).items():
        if options.get(key) != value:
            out.append(f"options.{key}: {options.get(key)!r}, benchmark {value!r}")
    out += [f"options.{key}: {options[key]!r}, not an option of this generator" for key in options
            if key not in asdict(SceneOptions())]
    return out


def outdated_benchmark(meta: dict[str, Any]) -> bool:
    """Whether a dataset was drawn as the benchmark by older code: with the canonical settings of
    its time (its ``canonical`` flag) that are not today's (another generator version, other
    ``SceneOptions()`` defaults). A set drawn with options of one's own is never outdated."""
    return bool(meta.get("canonical")) and (
        meta.get("version") != VERSION or meta.get("options") != asdict(SceneOptions())
    )


def is_benchmark(meta: dict[str, Any]) -> bool:
    """Whether a dataset's ``meta.json`` is the canonical benchmark as the code draws it now (see
    ``benchmark_differences``). The ``canonical`` flag a dataset carries says so only for the code
    that wrote it."""
    return not benchmark_differences(meta)


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """What a run records about the scenes dataset it trained on (from its ``meta.json``): the
    item source, and whether it is the canonical benchmark (``is_benchmark``)."""
    if not meta:
        return {}
    canonical = is_benchmark(meta)
    return {
        "source": meta.get("source"),
        "scenes": {k: meta.get(k) for k in ("version", "seed", "train", "val")} | {"benchmark": canonical},
    }
