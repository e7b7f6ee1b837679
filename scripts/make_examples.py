"""Copy validation images of a VOC-layout dataset, with their masks and labels, into the app's assets.

    # the Inspect tab's examples: NAME.jpg + NAME.png (the mask, as stored) + NAME.json (labels)
    python scripts/make_examples.py --data data/scenes --names val_000003 val_000017 --out assets/examples
    python scripts/make_examples.py --data data/scenes --count 5 --seed 0 --out assets/examples --clear
    # only images a model handles (per-image results of python -m core.evaluate --per-image):
    # exact classes, and every true class covered by its AFA label (per-class IoU >= 0.8)
    python scripts/make_examples.py --data data/scenes \
        --where docs/results/afa_mit_b0_scenes.per_image.json.gz --list
    # the Dataset tab's bundled subset (public mode): the same VOC layout, a sample of the split
    python scripts/make_examples.py --data data/scenes --count 100 --subset assets/datasets/scenes_val --clear

Images and masks are copied byte for byte (no re-encoding). Example file names are the dataset
name followed by its labels (``val_000003_top_bag.jpg``); ``NAME.json`` holds
``{"source", "image", "mask", "classes", "labels"}`` (``classes``: every class name of the
dataset, background first, so the mask's ids mean something without the dataset). A subset holds
``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/<split>.txt``, the dataset's
``classes.txt`` and its ``cls_labels.json`` entries for the chosen images.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402


def open_split(root: Path, split: str):
    """The dataset at ``root`` (its kind from its layout) without augmentation."""
    from core.config import load_config, set_by_path
    from core.data import build_dataset, class_names
    from core.evaluate import infer_dataset_kind

    cfg = load_config()
    set_by_path(cfg, "data.name", infer_dataset_kind(root))
    set_by_path(cfg, "data.root", str(root))
    cfg["model"]["num_classes"] = len(class_names(cfg))
    dataset = build_dataset(cfg, split, train=False)
    if not getattr(dataset, "has_masks", False):
        raise UserError(f"{root} split {split} has no masks")
    return dataset


def choose(dataset, names: list[str] | None, count: int | None, seed: int,
           allowed: dict[str, str | None] | None = None) -> list[int]:
    """Indices of the named images, or ``count`` of them drawn with ``seed`` (in dataset order).
    ``allowed`` (from ``qualifying``) restricts both to the images it qualifies."""
    if names:
        missing = [n for n in names if n not in dataset.names]
        if missing:
            raise UserError(f"not in the split: {', '.join(missing[:5])}")
        if allowed is not None:
            ruled_out = [f"{n} ({allowed.get(n) or 'not in the results'})" for n in names
                         if n not in allowed or allowed[n]]
            if ruled_out:
                raise UserError(f"ruled out by --where: {'; '.join(ruled_out[:3])}")
        return [dataset.names.index(n) for n in names]
    import numpy as np

    pool = [i for i, n in enumerate(dataset.names) if allowed is None or (n in allowed and not allowed[n])]
    count = min(int(count or 5), len(pool))
    rng = np.random.default_rng(seed)
    return sorted(pool[int(i)] for i in rng.choice(len(pool), size=count, replace=False))


def disqualification(entry: dict, stage: str, min_iou: float) -> str | None:
    """Why one image's per-image result (``core.evaluate``'s ``per_image`` entry) rules it out as
    an example: the model does not predict exactly its classes, or ``stage`` covers one of its
    classes with an IoU below ``min_iou``. None when it qualifies."""
    if entry["cls_f1"] < 1.0:
        return "the model does not predict exactly its classes"
    per_class = entry["stages"][stage]["per_class"]
    low = [f"{name} {per_class.get(name, 0.0):.2f}" for name in entry["labels"]
           if per_class.get(name, 0.0) < min_iou]
    return f"{stage} IoU below {min_iou:g}: {', '.join(low)}" if low else None


def qualifying(results: dict, stage: str, min_iou: float) -> dict[str, str | None]:
    """``{image name: disqualification or None}`` for every image of an evaluation's results."""
    if "per_image" not in results:
        raise UserError("the results have no per-image part (python -m core.evaluate --per-image)")
    if stage not in results["stages"]:
        raise UserError(f"the results have no stage {stage}; they have {', '.join(results['stages'])}")
    return {name: disqualification(entry, stage, min_iou) for name, entry in results["per_image"].items()}


def image_labels(dataset, index: int) -> list[str]:
    from core.io import read_mask

    ids = {int(v) for v in set(read_mask(dataset.mask_paths[index]).ravel().tolist())} - {0, 255}
    return [dataset.class_names[i] for i in sorted(ids)]


def write_examples(dataset, indices: list[int], out: Path, source: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in indices:
        name, image, mask = dataset.names[index], dataset.image_paths[index], dataset.mask_paths[index]
        labels = image_labels(dataset, index)
        stem = "_".join([name, *labels])
        shutil.copyfile(image, out / f"{stem}{image.suffix.lower()}")
        shutil.copyfile(mask, out / f"{stem}.png")
        info = {
            "source": f"{source} {name}",
            "image": f"{stem}{image.suffix.lower()}",
            "mask": f"{stem}.png",
            "classes": list(dataset.class_names),
            "labels": labels,
        }
        (out / f"{stem}.json").write_text(json.dumps(info, indent=1) + "\n")
        written.append(out / info["image"])
    return written


def write_subset(dataset, indices: list[int], out: Path, split: str) -> Path:
    root = Path(dataset.root)
    names = [dataset.names[i] for i in indices]
    for i in indices:
        for path in (dataset.image_paths[i], dataset.mask_paths[i]):
            target = out / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    lists = out / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    if (root / "classes.txt").is_file():
        shutil.copyfile(root / "classes.txt", out / "classes.txt")
    if (root / "cls_labels.json").is_file():
        labels = json.loads((root / "cls_labels.json").read_text())
        (out / "cls_labels.json").write_text(json.dumps({n: labels[n] for n in names if n in labels}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python scripts/make_examples.py", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a VOC-layout dataset folder (e.g. data/scenes)")
    p.add_argument("--split", default="val")
    p.add_argument("--names", nargs="+", default=None, help="the images to copy (default: --count of them)")
    p.add_argument("--count", type=int, default=None, help="how many to draw (5 examples; 100 for a subset)")
    p.add_argument("--seed", type=int, default=0)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="write examples here (default assets/examples)")
    where.add_argument("--subset", default=None, help="write a VOC-layout subset here instead")
    p.add_argument("--clear", action="store_true", help="empty the target folder first")
    p.add_argument("--where", default=None, metavar="RESULTS",
                   help="only images these per-image results (core.evaluate --per-image) qualify: the model "
                        "predicts exactly their classes and --stage covers each with IoU >= --min-iou")
    p.add_argument("--stage", default="rw_afa_label",
                   help="the label that must cover each object (with --where)")
    p.add_argument("--min-iou", type=float, default=0.8,
                   help="per-class IoU each true class needs (with --where)")
    p.add_argument("--list", action="store_true",
                   help="print the qualifying images (with --where) and copy nothing")

    def run() -> int:
        args = p.parse_args(argv)
        root = Path(args.data)
        if not root.is_dir():
            raise UserError(f"dataset folder not found: {root}")
        dataset = open_split(root, args.split)
        allowed = None
        if args.where:
            from core.evaluate import read_results

            results = read_results(args.where)
            allowed = qualifying(results, args.stage, args.min_iou)
        if args.list:
            if allowed is None:
                raise UserError("--list needs --where RESULTS")
            for name, reason in allowed.items():
                if not reason:  # the true labels the results hold (no mask read again)
                    print(name, " ".join(results["per_image"][name]["labels"]))
            print(f"{sum(not r for r in allowed.values())} of {len(allowed)} images qualify", file=sys.stderr)
            return 0
        target = Path(args.subset or args.out or ROOT / "assets" / "examples")
        count = args.count or (100 if args.subset else 5)
        indices = choose(dataset, args.names, count, args.seed, allowed)
        if args.clear and target.is_dir():
            keep = {"SOURCE.md"}
            for item in target.iterdir():
                if item.name in keep:
                    continue
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        if args.subset:
            write_subset(dataset, indices, target, args.split)
            print(f"{len(indices)} images of {root} ({args.split}) -> {target}")
        else:
            for path in write_examples(dataset, indices, target, f"{root.name} {args.split}"):
                print(path)
        return 0

    return run_cli(run, "scripts/make_examples.py")


if __name__ == "__main__":
    sys.exit(main())
