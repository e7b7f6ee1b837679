"""The offline "scenes" benchmark: multi-object images with exact masks, in VOC layout.

``python -m core.data.scenes --out data/scenes`` (no other option) writes THE benchmark: 3000
train and 300 val images of 192 px, seed 0, the ``SceneOptions()`` defaults. Each image holds
1-3 Fashion-MNIST items of four well-separated classes (top, trouser, shoe, bag: the ten source
classes grouped, see ``sprites.CLASS_SETS``), enlarged 2.4-4.2x (4-7 tokens at stride 16),
rotated, partly occluded, on a textured background with class-free clutter (its filled shapes
kept under two tokens, so that none passes for an item). Half of the images
are camouflaged: background, clutter and items draw their colours from one palette per image and
items are multi-coloured, so appearance alone does not complete an object (see ``compose``).
Recognition is easy (distinct silhouettes); localisation from image labels is the hard part.

Masks are exact because we draw the images: a pixel belongs to the class that makes up most of
its colour; where no class makes up at least ``IGNORE_WEIGHT`` of it (the 1-2 px soft edge of an
item), the mask says 255 (ignore), like VOC's boundary band. Train images use the TRAIN split of
the item source and val images its TEST split, so no item is in both; any seed draws from the
same distribution. Generation is a pure function of ``(seed, split, index)``.

Output (VOC layout, read by ``ScenesDataset``)::

    DIR/JPEGImages/NAME.jpg                 RGB, JPEG quality 95
    DIR/SegmentationClass/NAME.png          palette PNG of class ids, 255 = ignore
    DIR/ImageSets/Segmentation/train.txt, val.txt
    DIR/cls_labels.json                     {NAME: [class ids]}
    DIR/classes.txt                         background + the classes, one a line
    DIR/items.json                          per-item records (source split and index, class, box, ...)
    DIR/meta.json                           all options, seed, version, source (written last)

Modules: ``sprites`` (item sources and class sets), ``compose`` (drawing one scene), ``writer``
(the folder, atomically, under a lock), ``ensure`` (generate it when a run needs it and it is
missing), ``dataset`` (reading it), ``cli`` (``python -m core.data.scenes``).
Item source: Fashion-MNIST idx files (``--source DIR``, else Debian's
``/usr/share/datasets/fashion-mnist``, else ``data/FashionMNIST/raw``), or ``--source procedural``
(ten shapes drawn with OpenCV, grouped in four classes; needs no files).
"""

from core.data.scenes.cli import main
from core.data.scenes.compose import IGNORE_WEIGHT, Scene, SceneOptions, generate_scene, scene_rng
from core.data.scenes.dataset import ScenesDataset
from core.data.scenes.ensure import ScenesReady, ensure_scenes, procedural_root
from core.data.scenes.sprites import (
    CLASS_SETS,
    DEFAULT_CLASS_SET,
    FASHION_CLASSES,
    PROCEDURAL_CLASSES,
    ProceduralSprites,
    SourceMissing,
    SpriteSet,
    find_fashion_mnist,
    group_classes,
    load_fashion_mnist,
    load_source,
    read_idx,
)
from core.data.scenes.writer import (
    DEFAULT_TRAIN,
    DEFAULT_VAL,
    contact_sheet,
    dataset_lock,
    generate_dataset,
    is_complete,
    read_meta,
)

__all__ = [
    "CLASS_SETS",
    "DEFAULT_CLASS_SET",
    "DEFAULT_TRAIN",
    "DEFAULT_VAL",
    "FASHION_CLASSES",
    "IGNORE_WEIGHT",
    "PROCEDURAL_CLASSES",
    "ProceduralSprites",
    "Scene",
    "SceneOptions",
    "ScenesDataset",
    "ScenesReady",
    "SourceMissing",
    "SpriteSet",
    "contact_sheet",
    "dataset_lock",
    "ensure_scenes",
    "find_fashion_mnist",
    "generate_dataset",
    "generate_scene",
    "group_classes",
    "is_complete",
    "load_fashion_mnist",
    "load_source",
    "main",
    "procedural_root",
    "read_idx",
    "read_meta",
    "scene_rng",
]
