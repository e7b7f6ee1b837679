"""Writing the scenes benchmark to disk in VOC layout: in parallel, atomically, once at a time.

The folder appears complete or not at all: images are written into a hidden temporary folder
beside it, which is renamed into place at the end; a lock file beside the folder makes a second
writer (another process, another user of the app) wait and then find the folder done.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.data.scenes.compose import IGNORE_WEIGHT, SceneOptions, generate_scene, scene_rng
from core.data.scenes.sprites import SpriteSet, load_source
from core.errors import UserError
from core.io import voc_palette

VERSION = 3  # 2: class sets, camouflage, canonical 192 px defaults; 3: groups4, small filled clutter
DEFAULT_TRAIN = 3000
DEFAULT_VAL = 300


def _encode_mask(mask: np.ndarray) -> bytes:
    img = Image.fromarray(mask)
    img.putpalette(voc_palette().ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class _Rendered:
    name: str
    jpg: bytes
    png: bytes
    labels: list[int]
    record: dict[str, Any]


_WORKER: dict[str, Any] = {}  # what each worker process renders from (set by _init_worker)


def _init_worker(sets: dict[str, SpriteSet], seed: int, opts: SceneOptions) -> None:
    _WORKER.update(sets=sets, seed=seed, opts=opts)


def _render(job: tuple[str, int]) -> _Rendered:
    """Generate and encode image ``index`` of ``split``; a pure function of the worker state."""
    split, index = job
    opts: SceneOptions = _WORKER["opts"]
    scene = generate_scene(_WORKER["sets"][split], scene_rng(_WORKER["seed"], split, index), opts)
    bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, opts.quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
        raise RuntimeError("JPEG encoding failed")
    record = {"items": scene.items, "clutter_pixels": int(scene.clutter.sum()),
              "camouflaged": scene.camouflaged}
    return _Rendered(f"{split}_{index:06d}", jpg.tobytes(), _encode_mask(scene.mask), scene.labels(), record)


@contextlib.contextmanager
def dataset_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out``'s lock file (``.NAME.lock`` beside it) while writing it;
    another writer blocks here until the first is done."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(out: str | Path) -> bool:
    """True when ``out`` is a finished scenes dataset (its meta.json is written last)."""
    return (Path(out) / "meta.json").is_file()


def read_meta(out: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a finished scenes dataset (options, counts, item source)."""
    try:
        meta = json.loads((Path(out) / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{out} is not a finished scenes dataset (unreadable meta.json: {exc})") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{out}/meta.json is not a JSON object")
    return meta


def check_target(out: Path) -> None:
    """Refuse to write over a folder that is neither empty nor a finished scenes dataset."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_complete(out))):
        raise UserError(f"{out} exists, is not empty and is not a scenes dataset; choose another --out")


def load_sets(source: str | Path | None, seed: int, opts: SceneOptions) -> dict[str, SpriteSet]:
    """The items the benchmark's two splits draw from: train from the source's train split, val
    from its test split."""
    return {
        "train": load_source(source, "train", seed, opts.class_set),
        "val": load_source(source, "test", seed, opts.class_set),
    }


def generate_dataset(
    out: str | Path,
    seed: int = 0,
    n_train: int = DEFAULT_TRAIN,
    n_val: int = DEFAULT_VAL,
    opts: SceneOptions | None = None,
    source: str | Path | None = None,
    log: Any = None,
    workers: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Write the benchmark to ``out`` (see the package docstring); returns the meta dict.

    ``workers > 1`` renders in that many processes; the bytes are the same as with one, since
    every image depends on ``(seed, split, index)`` only. ``progress(done, total)`` is called as
    images are written. An existing scenes dataset at ``out`` is replaced only when the new one
    is complete; any other non-empty folder is refused.
    """
    opts = opts or SceneOptions()
    opts.validate()
    out = Path(out)
    check_target(out)
    sets = load_sets(source, seed, opts)
    with dataset_lock(out):
        return write_atomically(out, sets, seed, n_train, n_val, opts, log, workers, progress)


def write_atomically(
    out: Path,
    sets: dict[str, SpriteSet],
    seed: int,
    n_train: int,
    n_val: int,
    opts: SceneOptions,
    log: Any = None,
    workers: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Render into a hidden temporary sibling of ``out``, then rename it into place (replacing a
    finished dataset only once the new one is complete). The caller holds ``dataset_lock(out)``."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = _write(tmp, sets, seed, n_train, n_val, opts, log, workers, progress)
        if out.exists():  # replace a finished dataset (or an empty folder): move it aside, then swap
            old = out.parent / f".{out.name}.old-{os.getpid()}-{threading.get_ident()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write(
    out: Path,
    sets: dict[str, SpriteSet],
    seed: int,
    n_train: int,
    n_val: int,
    opts: SceneOptions,
    log: Any,
    workers: int,
    progress: Any,
) -> dict[str, Any]:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True)
    class_names = ["background", *sets["train"].class_names]
    cls_labels: dict[str, list[int]] = {}
    items: dict[str, Any] = {}
    class_images = np.zeros(len(class_names), np.int64)
    jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
    start = time.perf_counter()
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (sets, seed, opts))
        results = pool.imap(_render, jobs, chunksize=16)
    else:
        _init_worker(sets, seed, opts)
        results = map(_render, jobs)
    names: dict[str, list[str]] = {"train": [], "val": []}
    try:
        for done, r in enumerate(results, start=1):
            (out / "JPEGImages" / f"{r.name}.jpg").write_bytes(r.jpg)
            (out / "SegmentationClass" / f"{r.name}.png").write_bytes(r.png)
            cls_labels[r.name] = r.labels
            class_images[r.labels] += 1
            items[r.name] = r.record
            names[r.name.split("_")[0]].append(r.name)
            if log is not None and done % 500 == 0:
                log(f"{done}/{len(jobs)} images ({time.perf_counter() - start:.1f} s)")
            if progress is not None:
                progress(done, len(jobs))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _WORKER.clear()
    for split, listed in names.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in listed))

    (out / "classes.txt").write_text("".join(n + "\n" for n in class_names))
    (out / "cls_labels.json").write_text(json.dumps(cls_labels, indent=0, sort_keys=True) + "\n")
    (out / "items.json").write_text(json.dumps(items, sort_keys=True) + "\n")
    meta = {
        "generator": "core.data.scenes",
        "version": VERSION,
        "seed": seed,
        "train": n_train,
        "val": n_val,
        "options": asdict(opts),
        "canonical": asdict(opts) == asdict(SceneOptions()),
        "source": sets["train"].source,
        "source_splits": {"train": "train", "val": "test"},
        "classes": class_names,
        "ignore": f"255 where no class makes up >= {IGNORE_WEIGHT:.0%} of a pixel's colour "
        "(the soft 1-2 px edge of items), and on classes with fewer than min_pixels pixels",
        "images_per_class": {n: int(c) for n, c in zip(class_names[1:], class_images[1:])},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")  # last: marks it done
    return meta


def contact_sheet(root: str | Path, names: list[str], columns: int = 4) -> np.ndarray:
    """Image | coloured mask pairs of ``names`` as one RGB uint8 picture (for a quick look)."""
    root = Path(root)
    palette = voc_palette()
    tiles = []
    for name in names:
        bgr = cv2.imread(str(root / "JPEGImages" / f"{name}.jpg"))
        mask = np.array(Image.open(root / "SegmentationClass" / f"{name}.png"))
        tiles.append(np.concatenate([bgr[..., ::-1], palette[mask]], axis=1))
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        framed = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row]
        rows.append(np.concatenate(framed, axis=1))
    return np.concatenate(rows, axis=0)
