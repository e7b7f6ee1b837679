"""Evaluate a checkpoint: mIoU of every pseudo-label and segmentation stage, and classification F1.

    python -m core.evaluate --checkpoint C.safetensors --data DATA_ROOT --split val \
        [--crf] [--limit N] [--scales 1.0 0.5 1.5] [--dataset-kind scenes|voc|coco] [--per-image] --out R.json
    torchrun --nproc_per_node=N -m core.evaluate ...   (images sharded by rank, matrices summed)

Each image goes through ``core.analyze`` with its ground-truth image-level labels (the classes in
its mask), so the pseudo-label stages are measured as in training; the segmentation stages do
not use the labels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import distributed as ddp
from core.errors import ArgumentParser, UserError, one_line, run_cli
from core.method.metrics import ConfusionMatrix, multilabel_f1
from core.precision import PRECISIONS, resolve_precision

STAGES = ("cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label", "seg_crf_label")
PSEUDO_LABEL_STAGES = STAGES[:4]


def _to_uint8_hwc(image: Any) -> np.ndarray:
    """A sample's ``image_raw`` (3, H, W) on the 0-255 scale -> (H, W, 3) uint8."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class ImageEvaluation:
    """One image's scores: a confusion matrix per stage the model computed (against its mask),
    its ground-truth foreground class ids, the classifier's probabilities and its F1."""

    index: int
    name: str
    present: list[int]
    scores: np.ndarray  # (C-1,) sigmoid probabilities
    cls_f1: float
    confusions: dict[str, ConfusionMatrix]
    seconds: float


def score_stages(analysis: Any, gt: np.ndarray, num_classes: int,
                 ignore_index: int = 255) -> dict[str, ConfusionMatrix]:
    """One confusion matrix per label stage of ``analysis`` (``core.analyze.Analysis``) against
    the ground truth ``gt`` ``(H, W)``; stages the model did not compute are left out."""
    out = {}
    for stage in STAGES:
        pred = getattr(analysis, stage, None)
        if pred is not None:
            out[stage] = ConfusionMatrix(num_classes, ignore_index).update(np.asarray(pred), gt)
    return out


def evaluate_images(model: torch.nn.Module, dataset: Any, cfg: dict, indices: list[int] | None = None,
                    crf: bool = False, scales: list[float] | None = None, labels: str = "dense",
                    precision: str = "auto",
                    extra_stages: Mapping[str, Callable[[Any, np.ndarray], Any]] | None = None,
                    ) -> Iterator[ImageEvaluation]:
    """Analyse the images ``indices`` (default: all) of ``dataset`` one at a time, each with its
    ground-truth image-level labels (the classes in its mask), and yield its ``ImageEvaluation``.
    Summing the confusion matrices over images gives the dataset's (``evaluate_model``).
    ``labels``, ``precision``: see ``evaluate_model``. ``extra_stages``: more stages to score, each
    a function of the image's analysis and its mask ``(H, W)`` returning a label map (or None to
    skip that image), e.g. an experimental label made from the analysis."""
    if labels not in ("dense", "train"):
        raise ValueError(f"labels must be dense or train, got {labels!r}")
    from core.analyze import analyze

    num_classes = int(cfg["model"]["num_classes"])
    ignore = int(cfg["data"]["ignore_index"])
    if len(model.classes) != num_classes:
        raise ValueError(f"the model has {len(model.classes)} classes but model.num_classes is {num_classes}")
    if getattr(model, "meta", None) is None:  # analyze reads the method settings from model.meta
        model.meta = {"config": cfg}
    scales = tuple(scales or cfg["cam"]["scales"])
    for index in range(len(dataset)) if indices is None else indices:
        start = time.perf_counter()
        sample = dataset[index]
        gt = _to_numpy(sample["mask"]).astype(np.int64)
        present = sorted(int(c) for c in np.unique(gt) if 0 < c < num_classes)
        # the ground-truth image-level labels (as class ids; analyze also takes names)
        result = analyze(model, _to_uint8_hwc(sample["image_raw"]), labels=present, scales=scales,
                         crf=crf, attention=False, dense=labels == "dense", precision=precision,
                         seg_merge=cfg["infer"]["seg_merge"])
        truth = np.zeros(num_classes - 1, dtype=np.float32)
        truth[[c - 1 for c in present]] = 1.0
        probs = np.asarray(result.scores, dtype=np.float32)
        confusions = score_stages(result, gt, num_classes, ignore)
        for stage, make_label in (extra_stages or {}).items():
            pred = make_label(result, gt)
            if pred is not None:
                confusions[stage] = ConfusionMatrix(num_classes, ignore).update(np.asarray(pred), gt)
        yield ImageEvaluation(
            index=int(index),
            name=str(sample.get("name", index)),
            present=present,
            scores=probs,
            cls_f1=multilabel_f1((probs > 0.5).astype(np.float32), truth),
            confusions=confusions,
            seconds=time.perf_counter() - start,
        )


def image_entry(ev: ImageEvaluation, names: list[str]) -> dict[str, Any]:
    """The JSON form of one image's evaluation (``--per-image``): per stage its mIoU, the IoU of
    every class it defines (present in the mask or predicted) and its confusion matrix
    (``confusion[g][p]`` pixels of true class g predicted p; ``unpredicted[g]``: pixels of class g
    given no class id), so dataset scores can be recomputed on any subset (e.g. a bootstrap)."""
    stages = {}
    for stage, cm in ev.confusions.items():
        d = cm.as_dict(names)
        stages[stage] = {
            "miou": d["miou"],
            "per_class": {k: v for k, v in d["per_class"].items() if v is not None},
            "confusion": cm.matrix.tolist(),
            "unpredicted": cm.unpredicted.tolist(),
        }
    return {"labels": [names[c] for c in ev.present], "cls_f1": ev.cls_f1, "stages": stages}


def evaluate_model(model: torch.nn.Module, dataset: Any, cfg: dict, limit: int | None = None,
                   crf: bool = False, rank: int = 0, world_size: int = 1,
                   scales: list[float] | None = None, progress: bool = False,
                   labels: str = "dense", precision: str = "auto",
                   per_image: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` (unwrapped, any device) on the first ``limit`` samples of ``dataset``.

    Rank ``r`` of ``world_size`` analyses every ``world_size``-th image; confusion matrices, F1 sums
    and counts are summed over ranks, so every rank returns the same dict:
    ``{"n_images", "classes", "stages": {stage: {"miou", "per_class"}}, "cls_f1", "seconds",
    "images_per_s"}``,
    and with ``per_image`` also ``"per_image": {name: image_entry(...)}``.
    Stages the model cannot compute (``None`` in the analysis) are left out.
    ``labels``: "dense" scores ``par_label`` / ``rw_*_label`` made with the single background
    score ``cam.bg_thresh`` (every pixel labelled, like ``cam_label``); "train" scores the training
    labels with their two-threshold 255 band, whose pixels count as errors.
    ``precision``: of the model passes (``core.analyze``); the segmentation scales are merged as
    ``cfg['infer']['seg_merge']`` says.
    """
    num_classes = int(cfg["model"]["num_classes"])
    ignore = int(cfg["data"]["ignore_index"])
    names = list(model.classes)
    total = len(dataset) if limit is None else min(int(limit), len(dataset))
    mine = ddp.shard(list(range(total)), rank, world_size)
    matrices = {stage: ConfusionMatrix(num_classes, ignore) for stage in STAGES}
    # per stage: images that produced it; then F1 sum and the number of images
    counts = torch.zeros(len(STAGES) + 2, dtype=torch.float64)
    entries: dict[str, Any] = {}

    start = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc="evaluate", disable=not sys.stderr.isatty())
    try:
        for ev in evaluate_images(model, dataset, cfg, mine, crf=crf, scales=scales, labels=labels,
                                  precision=precision):
            for i, stage in enumerate(STAGES):
                if stage in ev.confusions:
                    matrices[stage].merge(ev.confusions[stage])
                    counts[i] += 1
            counts[-2] += ev.cls_f1
            counts[-1] += 1
            if per_image:
                entries[ev.name] = image_entry(ev, names)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    for stage in STAGES:
        matrices[stage].all_reduce()
    counts = ddp.all_reduce_sum(counts)
    seconds = time.perf_counter() - start
    n_images = int(counts[-1].item())
    stages = {}
    for i, stage in enumerate(STAGES):
        if counts[i] > 0:
            stages[stage] = matrices[stage].as_dict(names)  # miou, pixel_accuracy, per_class
    out = {
        "n_images": n_images,
        "labels": labels,
        "precision": resolve_precision(precision, next(model.parameters()).device).name,
        "seg_merge": cfg["infer"]["seg_merge"],
        "classes": names,  # the confusion matrices' order (the stages' per_class keys are written sorted)
        "stages": stages,
        "cls_f1": float(counts[-2].item() / n_images) if n_images else None,
        "seconds": seconds,
        "images_per_s": n_images / seconds if seconds > 0 else None,
    }
    if per_image:
        out["per_image"] = {k: v for part in ddp.gather_json(entries) for k, v in part.items()}
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The short form that goes into metrics.jsonl and checkpoint metadata."""
    return {"miou": {stage: v["miou"] for stage, v in result["stages"].items()}, "cls_f1": result["cls_f1"]}


def headline_miou(miou: Any) -> tuple[str, float] | None:
    """The one mIoU that stands for an evaluation, named: ``(stage, value)`` with the value a
    fraction, or None. ``miou`` is a ``summary``'s (``{stage: value}``) or a plain number.
    The segmentation's (``seg_label``) where the model has a decoder, else the best pseudo-label
    stage (a CAM-only model's)."""
    if isinstance(miou, dict):
        found = {k: float(v) for k, v in miou.items() if _finite_number(v)}
        if "seg_label" in found:
            return "seg_label", found["seg_label"]
        pseudo = {k: v for k, v in found.items() if k in PSEUDO_LABEL_STAGES}
        best = max(pseudo, key=pseudo.get, default=None)
        return None if best is None else (best, pseudo[best])
    return ("miou", float(miou)) if _finite_number(miou) else None


def read_results(path: str | Path) -> dict[str, Any]:
    """An evaluation written by ``python -m core.evaluate --out`` (``.json``, or ``.json.gz`` as
    ``docs/results/`` keeps the per-image ones). A file that is missing or not such JSON is a
    ``UserError`` naming it."""
    import gzip
    import json

    path = Path(path)
    try:
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:  # missing, unreadable, not gzip, not JSON
        raise UserError(f"cannot read the evaluation results {path}: {one_line(exc)}") from None


EVALUATION_SUFFIX = ".eval.json"  # NAME.eval.json beside NAME.safetensors: its published evaluation


def published_evaluation(checkpoint: str | Path) -> tuple[str, float, str] | None:
    """The headline of a checkpoint file's published evaluation, ``NAME.eval.json`` beside it (the
    summary ``scripts/make_default_checkpoints.sh`` writes for the shipped models): ``(stage,
    value, what)`` with ``what`` e.g. "300 val images"; None when there is none or it is unreadable
    (then the checkpoint's own periodic evaluation is all there is)."""
    import json

    path = Path(checkpoint).with_suffix(EVALUATION_SUFFIX)
    try:
        result = json.loads(path.read_text())
        miou = {stage: entry["miou"] for stage, entry in result["stages"].items()}
        n_images, split = int(result["n_images"]), str(result["split"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    headline = headline_miou(miou)
    return None if headline is None else (*headline, f"{n_images} {split} images")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


# ---------------------------------------------------------------- command line
def infer_dataset_kind(root: Path, hint: str | None = None) -> str:
    """scenes | voc | coco from a dataset folder's layout; ``hint`` (the kind the checkpoint was
    trained on) decides when the layout does not."""
    if (root / "classes.txt").is_file():  # written by python -m core.data.scenes
        return "scenes"
    images = root / "JPEGImages"
    if any((images / sub).is_dir() for sub in ("train2014", "val2014", "train", "val")):
        return "coco"
    if images.is_dir():
        return "voc"
    if hint in ("scenes", "voc", "coco"):
        return hint
    raise UserError(f"{root} is not a dataset in VOC layout (no JPEGImages/ folder); "
                     "pass --dataset-kind scenes|voc|coco")


def parse_args(argv: list[str] | None) -> Any:
    p = ArgumentParser(prog="python -m core.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint of this project")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--split", default="val")
    p.add_argument("--dataset-kind", choices=["scenes", "voc", "coco"], default=None)
    p.add_argument("--crf", action="store_true", help="also evaluate the dense-CRF segmentation")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="CAM scales (default: the config's)")
    p.add_argument("--labels", choices=["dense", "train"], default="dense",
                   help="pseudo-label stages: one background score (dense, default) or the training "
                        "labels with their ignore band counted as errors (train)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="model passes: auto (bf16 where the hardware runs it natively), fp32 (exact), "
                        "bf16, fp16")
    p.add_argument("--seg-merge", choices=["max", "mean"], default=None,
                   help="combine the segmentation scales by the max at stride 4 (the authors', "
                        "default: the checkpoint's infer.seg_merge) or the mean at image size")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="settings",
                   help="evaluate with another method setting (cam, par, affinity or infer section), "
                   "e.g. --set affinity.radius=3; repeatable")
    p.add_argument("--per-image", action="store_true",
                   help="add a per_image section: per image and stage its mIoU, class IoUs and "
                        "confusion matrix")
    p.add_argument("--out", default=None, help="write the JSON here (printed to stdout otherwise)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def open_evaluation(checkpoint: str | Path, root: str | Path, split: str = "val", kind: str | None = None,
                    seg_merge: str | None = None) -> tuple[dict, Any]:
    """The config and dataset with which ``checkpoint`` is evaluated on the folder ``root``: the
    paper's defaults, the checkpoint's data and method sections and its model, ``data.*`` pointed
    at ``root`` / ``split`` (``kind`` from the layout unless given). Raises ``UserError`` when the
    dataset's classes are not the checkpoint's (by name, in order)."""
    from core.checkpoint import read_meta
    from core.config import load_config, set_by_path
    from core.data import build_dataset

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    meta = read_meta(checkpoint)
    cfg = load_config()
    saved = meta.get("config")
    if isinstance(saved, dict):
        for section in ("data", "cam", "par", "affinity", "infer"):
            cfg[section].update(saved.get(section, {}))
    cfg["model"].update(meta["model"])
    kind = kind or infer_dataset_kind(root, (meta.get("data") or {}).get("name"))
    set_by_path(cfg, "data.name", kind)
    set_by_path(cfg, "data.root", str(root))
    set_by_path(cfg, "data.val_split", split)
    if seg_merge:
        set_by_path(cfg, "infer.seg_merge", seg_merge)
    dataset = build_dataset(cfg, split, train=False)
    known = list(meta.get("classes") or [])
    if known and list(dataset.class_names) != known:
        raise UserError(f"{Path(checkpoint).name} knows {', '.join(known[1:])} but {root} has "
                        f"{', '.join(dataset.class_names[1:])}: evaluate it on a dataset of its classes")
    return cfg, dataset


METHOD_SECTIONS = ("cam", "par", "affinity", "infer")


def apply_method_settings(model: Any, cfg: dict, settings: list[str]) -> None:
    """Override method settings (``section.key=value``, sections ``METHOD_SECTIONS``) in ``cfg``
    and in the model's saved config, which ``core.analyze`` reads; validated like a config file."""
    from core.config import load_config

    for item in settings:
        if item.split(".", 1)[0] not in METHOD_SECTIONS:
            raise UserError(f"--set {item}: only the {', '.join(METHOD_SECTIONS)} sections can be changed")
    checked = load_config(None, settings)  # parses and validates the values
    saved = model.meta.setdefault("config", {})
    for item in settings:
        section, key = item.split("=", 1)[0].strip().split(".", 1)
        value = checked[section][key.split(".")[0]]
        cfg[section][key.split(".")[0]] = value
        saved.setdefault(section, {})[key.split(".")[0]] = value


def run(args: Any) -> dict[str, Any]:
    from core import load_model

    if not Path(args.data).is_dir():
        raise UserError(f"dataset folder not found: {args.data}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.scales is not None and any(s <= 0 for s in args.scales):
        raise UserError(f"--scales must be positive numbers, got {' '.join(map(str, args.scales))}")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; name the JSON file to write")
    info, device = ddp.init_distributed(args.device)
    cfg, dataset = open_evaluation(args.checkpoint, args.data, args.split, args.dataset_kind, args.seg_merge)
    model = load_model(args.checkpoint, device=device)
    if args.settings:
        apply_method_settings(model, cfg, args.settings)
    result = evaluate_model(model, dataset, cfg, limit=args.limit, crf=args.crf, rank=info.rank,
                            world_size=info.world_size, scales=args.scales, progress=True,
                            labels=args.labels, precision=args.precision,
                            per_image=args.per_image)
    return {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
            "dataset_kind": cfg["data"]["name"], "crf": bool(args.crf), "settings": list(args.settings),
            **result}


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 2 with one line on stderr for bad input (a bug raises with its traceback)."""
    return run_cli(lambda: _main(argv), "python -m core.evaluate")


def _main(argv: list[str] | None) -> int:
    import json
    import traceback

    from core.checkpoint import atomic_write_json

    args = parse_args(argv)
    try:
        result = run(args)
        if ddp.env_info().is_main:
            if args.out:
                atomic_write_json(args.out, result)
                print(json.dumps(summary(result), indent=2))
            else:
                print(json.dumps(result, indent=2))
    except UserError:
        if args.debug:  # --debug shows where
            traceback.print_exc()
        raise
    finally:
        ddp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
