"""What one browser session remembers between events (held in ``gr.State``).

It stays small: the analysed image (so an analysis evicted from the shared cache can be
recomputed), which checkpoints and settings were used, the cache keys, and the clicked point.
The analyses themselves live in :data:`app.cache.ANALYSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Session:
    image: np.ndarray | None = None  # (H, W, 3) uint8 as read by core.io
    image_hash: str = ""
    image_notes: list[str] = field(default_factory=list)
    afa_id: str | None = None  # checkpoint ids (paths relative to the app root)
    cnn_id: str | None = None
    labels: tuple[str, ...] | None = None  # user override of image-level labels, None = predicted
    crf: bool = False
    keys: dict[str, tuple] = field(default_factory=dict)  # "afa" / "cnn" -> cache key
    point: tuple[int, int] | None = None  # clicked (x, y) in image pixels

    @property
    def ready(self) -> bool:
        return self.image is not None and "afa" in self.keys

    def evolve(self, **changes) -> Session:
        """A copy with ``changes``: handlers never mutate the state they were given."""
        return replace(self, **changes)
