"""A process-wide LRU cache of analyses, bounded in entries and in bytes.

Keys are built by :func:`analysis_key` from the image content, the checkpoint (path, mtime, size)
and the analysis settings, so a retrained checkpoint or different labels never hit a stale entry
(the CAM scales are the checkpoint's own: its fingerprint covers them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


def image_digest(image: np.ndarray) -> str:
    """Content hash of an image array (shape and dtype included)."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}|{image.dtype}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """``path|mtime_ns|size``: changes whenever the file is rewritten."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def analysis_key(
    image_hash: str,
    checkpoint: str | os.PathLike,
    labels: tuple[str, ...] | None,
    crf: bool,
    dense: bool = True,
) -> tuple:
    """``(image, checkpoint, labels, crf, dense)``: what an analysis depends on."""
    labels_part = None if labels is None else tuple(sorted(labels))
    return (image_hash, checkpoint_fingerprint(checkpoint), labels_part, bool(crf), bool(dense))


def nbytes_of(obj: Any, _depth: int = 0) -> int:
    """Approximate memory held by the arrays inside ``obj`` (dataclasses, lists, dicts)."""
    if _depth > 4 or obj is None:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch tensor
        return int(obj.element_size() * obj.nelement())
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes_of(getattr(obj, f.name), _depth + 1) for f in fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(nbytes_of(item, _depth + 1) for item in obj)
    if isinstance(obj, dict):
        return sum(nbytes_of(item, _depth + 1) for item in obj.values())
    return 0


class LRUCache:
    """Thread-safe LRU mapping bounded by ``max_entries`` and ``max_bytes``.

    An item larger than ``max_bytes`` on its own is still kept (alone), so the current user's
    analysis is never thrown away right after it was computed."""

    def __init__(
        self, max_entries: int = 16, max_bytes: int = 1 << 30, sizeof: Callable[[Any], int] = nbytes_of
    ):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self._computing: dict[Any, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            if key not in self._items:
                self.misses += 1
                return default
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Any, value: Any) -> None:
        size = int(self._sizeof(value))
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            self._evict()

    def get_or_compute(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, was_cached)``. Computes outside the cache lock so other keys are not blocked;
        concurrent requests for the same missing key wait for one computation instead of repeating it."""
        sentinel = object()
        value = self.get(key, sentinel)
        if value is not sentinel:
            return value, True
        with self._lock:
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            value = self.get(key, sentinel)
            if value is not sentinel:
                return value, True
            try:
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    self._computing.pop(key, None)
        return value, False

    def _evict(self) -> None:
        while len(self._items) > self.max_entries or (self._bytes > self.max_bytes and len(self._items) > 1):
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._items),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


def release_free_memory() -> None:
    """Hand memory that was freed back to the operating system (glibc's ``malloc_trim``); called
    after each new analysis (its working memory is freed, older analyses may have been evicted).

    Without it the server keeps that memory: glibc raises its mmap threshold as large arrays are
    freed, so later arrays of that size come from the heap, whose free pages it keeps (measured in
    tests/app/test_memory.py: 40 analyses of 512 px images grew the resident memory by the 1.5 GB
    cache limit plus 0.9 GB). A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


# One cache for the whole server: a second user analysing an example gets it instantly.
ANALYSES = LRUCache(
    max_entries=_env_int("AFA_APP_CACHE_ENTRIES", 24), max_bytes=_env_int("AFA_APP_CACHE_MB", 1536) << 20
)
