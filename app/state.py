"""What one browser session remembers between events (held in ``gr.State``).

It stays small: the analysed image (so an analysis evicted from the shared cache can be
recomputed), which checkpoints and settings were used, the cache keys, and the clicked point.
The analyses themselves live in :data:`app.cache.ANALYSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from app.render import DEFAULT_OPACITY


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

    def point_or_centre(self) -> tuple[int, int]:
        """The clicked ``(x, y)``; the image centre before the first click."""
        if self.point is not None or self.image is None:
            return self.point or (0, 0)
        return self.image.shape[1] // 2, self.image.shape[0] // 2

    def evolve(self, **changes) -> Session:
        """A copy with ``changes``: handlers never mutate the state they were given."""
        return replace(self, **changes)


@dataclass
class ViewSettings:
    """How the user asked the views to be drawn (not what is analysed): the CAM class, the
    overlay opacity, the attention block and whether token maps are smoothed."""

    class_id: int | None = None
    opacity: float | None = DEFAULT_OPACITY
    block: int | None = None
    smooth: bool = False

    def __post_init__(self):
        self.opacity = float(DEFAULT_OPACITY if self.opacity is None else self.opacity)
        self.smooth = bool(self.smooth)
