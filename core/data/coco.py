"""MS COCO 2014 in VOC layout, as the AFA authors use it (81 classes: background + 80).

Layout (ROOT = ``cfg["data"]["root"]``)::

    ROOT/JPEGImages/train2014/COCO_train2014_000000000009.jpg     (also accepted: JPEGImages/train)
    ROOT/JPEGImages/val2014/...
    ROOT/SegmentationClass/train2014/NAME.png                      class ids 0..80, 255 ignore
    ROOT/SegmentationClass/val2014/NAME.png
    ROOT/ImageSets/Segmentation/train.txt, val.txt                 (or ROOT/ImageSets/*.txt, ROOT/*.txt)
    ROOT/cls_labels_onehot.npy or ROOT/cls_labels.json             optional image labels

The masks use contiguous ids: COCO's category ids (1..90 with gaps) mapped in order to 1..80,
which is the order of ``COCO_CLASSES``. Splits whose name starts with "train" read the train2014
folders, all others the val2014 folders.
"""

from __future__ import annotations

from pathlib import Path

from core.data.voc import Layout, VOCLayoutDataset

COCO_CLASSES: list[str] = [
    "background",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]


def _split_folder(parent: Path, split: str) -> Path:
    """``parent/train2014`` (or ``parent/train``) for train splits, the val ones otherwise."""
    base = "train" if split.startswith("train") else "val"
    for name in (f"{base}2014", base):
        if (parent / name).is_dir():
            return parent / name
    return parent / f"{base}2014"


class COCODataset(VOCLayoutDataset):
    """COCO 2014 in VOC layout; items as in ``VOCLayoutDataset``."""

    kind = "COCO"

    def layout(self, root: Path, split: str) -> Layout:
        candidates = [
            root / "ImageSets" / "Segmentation" / f"{split}.txt",
            root / "ImageSets" / f"{split}.txt",
            root / f"{split}.txt",
        ]
        return Layout(
            list_file=next((p for p in candidates if p.is_file()), candidates[0]),
            image_dir=_split_folder(root / "JPEGImages", split),
            mask_dir=_split_folder(root / "SegmentationClass", split),
            class_names=COCO_CLASSES,
            list_hint=f" (nor ImageSets/{split}.txt or {split}.txt); the authors ship train.txt and val.txt "
            "lists of COCO 2014 image names",
            mask_hint="; convert the COCO instance annotations to class-id PNGs (VOC layout)",
        )
