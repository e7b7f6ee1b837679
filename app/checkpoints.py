"""The checkpoints a browser may name: discovered on disk, refreshed on demand, validated on use."""

from __future__ import annotations

import threading

from app.backend import BACKEND, CheckpointInfo
from core.errors import UserError

NO_CNN = ("none", "")  # the CNN picker's "no checkpoint" entry


class CheckpointRegistry:
    """The checkpoints found by ``BACKEND.discover``; an id a browser sends must be one of them."""

    def __init__(self):
        self._items: dict[str, CheckpointInfo] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[CheckpointInfo]:
        found = BACKEND.discover()
        with self._lock:
            self._items = {info.id: info for info in found}
        return found

    def all(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items.values())

    def resolve(self, checkpoint_id: str | None) -> CheckpointInfo | None:
        if not checkpoint_id:
            return None
        with self._lock:
            info = self._items.get(checkpoint_id)
        if info is None:
            self.refresh()
            with self._lock:
                info = self._items.get(checkpoint_id)
        if info is None:
            raise UserError(f"Checkpoint '{checkpoint_id}' is not available any more; pick another one.")
        return info

    def choices(self, kind: str) -> list[tuple[str, str]]:
        """``(label, id)`` pairs of one model kind; names starting with the kind come first."""
        items = [info for info in self.all() if info.kind == kind]
        items.sort(key=lambda i: (not i.path.stem.startswith(kind + "_"), "runs/" in i.id, i.id))
        return [(info.label, info.id) for info in items]

    def picker_choices(self, kind: str) -> list[tuple[str, str]]:
        """What a picker of ``kind`` offers: the CNN picker also offers no checkpoint at all."""
        return self.choices(kind) + ([NO_CNN] if kind == "cnn_cam" else [])

    def default(self, kind: str) -> str | None:
        choices = self.choices(kind)
        return choices[0][1] if choices else None


CHECKPOINTS = CheckpointRegistry()


def describe_domain(info: CheckpointInfo | None) -> str:
    """What a checkpoint knows and what it learnt from, as its metadata says: "knows top, trouser,
    shoe, bag · trained on scenes (data/scenes)"."""
    if info is None:
        return ""
    from core.data import COCO_CLASSES, VOC_CLASSES

    classes = list(info.classes)
    if classes == list(VOC_CLASSES):
        knows = f"knows the {len(classes) - 1} PASCAL VOC classes"
    elif classes == list(COCO_CLASSES):
        knows = f"knows the {len(classes) - 1} COCO classes"
    elif classes:
        knows = f"knows {', '.join(classes[1:])}"
    else:
        knows = "its class names are not recorded"
    data = info.meta.get("data") if isinstance(info.meta.get("data"), dict) else {}
    if data.get("converted_from"):
        origin = f"converted from the authors' checkpoint {data['converted_from']}"
    elif data.get("name"):
        root = f" ({data['root']})" if data.get("root") else ""
        origin = f"trained on {data['name']}{root}"
    else:
        origin = "training data not recorded"
    return f"{knows} · {origin}"
