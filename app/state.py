"""What one browser session remembers between events (held in ``gr.State``).

It stays small: the analysed image (so an analysis evicted from the shared cache can be
recomputed), which checkpoints and settings were used, the cache keys, and the clicked point.
The analyses themselves live in :data:`app.cache.ANALYSES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.render import DEFAULT_OPACITY

LABEL_MODES = ("true", "predicted", "custom")


@dataclass
class Session:
    image: np.ndarray | None = None  # (H, W, 3) uint8 as read by core.io
    image_hash: str = ""
    image_notes: list[str] = field(default_factory=list)
    afa_id: str | None = None  # checkpoint ids (paths relative to the app root)
    cnn_id: str | None = None
    labels: tuple[str, ...] | None = None  # the user's image-level labels (label_mode "custom")
    label_mode: str = "predicted"  # "true" (the ground truth's), "predicted" or "custom"
    crf: bool = False
    dense: bool = True  # pseudo labels as core.evaluate scores them (False: the training labels)
    show_errors: bool = False  # paint the label maps' errors against the ground truth
    truth: Any = None  # app.truth.GroundTruth of the image, when it has one
    keys: dict[str, tuple] = field(default_factory=dict)  # "afa" / "cnn" / "cmp_a" / "cmp_b" -> cache key
    compare: tuple[str, str] | None = None  # the Compare tab's two checkpoint ids
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
