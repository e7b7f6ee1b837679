"""Markdown tables from evaluation JSON files (``python -m core.evaluate --per-image --out ...``).

    python scripts/results_table.py NAME=FILE.json[.gz] [NAME=FILE.json ...] [--bootstrap 1000]
    python scripts/results_table.py --split FULL.json SUMMARY.json   # per-image part -> FULL.json.gz
    python scripts/results_table.py --gain "rw_afa_label-par_label" NAME=FILE.json ...
    python scripts/results_table.py --errors NAME=FILE.json.gz ...   # what kind of error each stage makes
    python scripts/results_table.py --confusion seg_label NAME=FILE.json.gz ...  # which class takes which
    python scripts/results_table.py --steps seg_label A=FILE B=FILE ...  # each model minus the one above

Each cell is the dataset mIoU (%). With per-image results in the files, ``--bootstrap N`` adds a
95 % interval from resampling the images with replacement (N times; the confusion matrices of
the drawn images are summed, so each replicate is a dataset mIoU computed as the real one), and
``--gain A-B`` prints, per file, the difference of two stages with its paired interval (the same
resampled images for both stages): a gain whose interval excludes 0 is not noise. ``--errors``
splits each stage's wrong pixels by kind (``core.method.metrics.ERROR_KINDS``, summed over the
images), each a share of the pixels it can occur in: background pixels labelled as a class (false
positive), item pixels labelled background (false negative, missed) or as another class (wrong
class), and pixels left without a class (unlabelled). ``--confusion STAGE`` prints, per file,
where each true class's pixels went (% of its pixels per predicted class) and each class's
predicted area over its true area (``ConfusionMatrix.class_shares``): a class above 1 takes other
classes' pixels, one below 1 loses them. ``--steps STAGE`` compares models instead of stages: each
file's STAGE minus the previous file's (an ablation's rows, in order), with the paired interval of
the same resampled images; the files must hold the same images.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for core
from core.data.voc import DatasetError, read_class_names  # noqa: E402
from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.evaluate import read_results  # noqa: E402
from core.method.metrics import ERROR_KINDS, ERROR_SHARE_OF, ConfusionMatrix  # noqa: E402

STAGES = ["cam_label", "par_label", "rw_mhsa_label", "rw_afa_label", "seg_label", "seg_crf_label"]


def per_image_counts(
    data: dict, stage: str, images: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-image confusion matrices ``(n, C, C)`` and prediction-less pixel counts ``(n, C)`` of
    ``stage`` (in the file's image order, or in the order of ``images``), or None when the file has
    no per-image results for it."""
    per_image = data.get("per_image") or {}
    entries = list(per_image.values()) if images is None else [per_image[name] for name in images]
    if not entries or any(stage not in e["stages"] for e in entries):
        return None
    mats = np.stack([np.asarray(e["stages"][stage]["confusion"], np.int64) for e in entries])
    unpred = np.stack([np.asarray(e["stages"][stage]["unpredicted"], np.int64) for e in entries])
    return mats, unpred


def bootstrap(counts: tuple[np.ndarray, np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Dataset mIoU of each replicate, ``draws (N, n)`` image indices -> ``(N,)``: the drawn
    images' counts summed, then scored by core's ``ConfusionMatrix`` (the evaluator's own rule)."""
    mats, unpred = counts
    weights = np.stack([np.bincount(d, minlength=len(mats)) for d in draws])  # (N, n)
    summed = np.einsum("rn,nij->rij", weights, mats)
    summed_unpred = weights @ unpred
    return np.array([ConfusionMatrix.from_counts(m, u).miou() for m, u in zip(summed, summed_unpred)])


def print_errors(loaded: list[tuple[str, dict]]) -> None:
    """Per file and stage (with per-image results): the kinds of error as shares of the pixels
    they can occur in (``ConfusionMatrix.error_shares``), from the summed confusion matrices."""
    kinds = [f"{ERROR_KINDS[k]} (% of {of})" for k, of in ERROR_SHARE_OF.items()]
    print("\n| model | stage | " + " | ".join(kinds) + " |")
    print("|---" * (2 + len(ERROR_SHARE_OF)) + "|")
    for name, data in loaded:
        for stage in STAGES:
            counts = per_image_counts(data, stage)
            if counts is None:
                continue
            shares = ConfusionMatrix.from_counts(counts[0].sum(0), counts[1].sum(0)).error_shares()
            cells = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in shares.values())
            print(f"| {name} | {stage} | {cells} |")


def class_names(data: dict, n: int) -> list[str]:
    """The confusion matrices' class order: the file's ``classes`` (written by core.evaluate), else
    the ``classes.txt`` of the dataset it names when that is still there, else the class ids."""
    names = data.get("classes")
    if not names:
        try:
            names = read_class_names(str(data.get("data", "")))
        except DatasetError:
            names = []
    return list(names) if len(names) == n else [str(i) for i in range(n)]


def print_confusion(loaded: list[tuple[str, dict]], stage: str) -> None:
    """Per file with per-image results for ``stage``: the summed confusion as class shares."""
    for name, data in loaded:
        counts = per_image_counts(data, stage)
        if counts is None:
            print(f"\n{name}: no per-image results for {stage}")
            continue
        shares, area = ConfusionMatrix.from_counts(counts[0].sum(0), counts[1].sum(0)).class_shares()
        names = class_names(data, len(area))
        print(f"\n{name}, {stage}: % of each true class's pixels by predicted class; predicted / true area")
        print("| true \\ predicted | " + " | ".join(names) + " | none | area |")
        print("|---" * (len(names) + 3) + "|")
        for i, true in enumerate(names):
            cells = ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in shares[i]]
            ratio = "-" if np.isnan(area[i]) else f"{area[i]:.2f}"
            print(f"| {true} | " + " | ".join(cells) + f" | {ratio} |")


def paired_interval(first: tuple, second: tuple, draws: np.ndarray | None) -> str:
    """`` [lo, hi]``: the 95 % interval of ``first``'s mIoU minus ``second``'s (points), both
    scored on the same bootstrap ``draws``; "" without draws."""
    if draws is None:
        return ""
    reps = (bootstrap(first, draws) - bootstrap(second, draws)) * 100
    return f" [{np.percentile(reps, 2.5):.1f}, {np.percentile(reps, 97.5):.1f}]"


def print_steps(loaded: list[tuple[str, dict]], stage: str, draws_for) -> None:
    """Each file's ``stage`` minus the previous file's, paired: the replicates draw the same images
    (by name) for both models. Files whose images differ are bad input (a pairing needs them).
    ``draws_for(n)``: the bootstrap draws for ``n`` images, None without intervals."""
    print(f"\n{stage}, each model minus the one above it (mIoU points, 95 % paired bootstrap interval):")
    for (above, first), (name, second) in zip(loaded, loaded[1:]):
        images = list(first.get("per_image") or {})
        if sorted(images) != sorted(second.get("per_image") or {}):
            raise UserError(f"--steps pairs images: {above} and {name} hold results of other images")
        a, b = per_image_counts(second, stage, images), per_image_counts(first, stage, images)
        if a is None or b is None or stage not in first["stages"] or stage not in second["stages"]:
            print(f"- {name} - {above}: no per-image results for {stage}")  # e.g. no CRF stage
            continue
        diff = 100 * (second["stages"][stage]["miou"] - first["stages"][stage]["miou"])
        ci = paired_interval(a, b, draws_for(len(images)))
        print(f"- {name} - {above}: {diff:+.1f}{ci}")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python scripts/results_table.py", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", metavar="NAME=FILE.json")
    p.add_argument("--bootstrap", type=int, default=0, help="replicates for 95 %% intervals (0: none)")
    p.add_argument(
        "--gain",
        action="append",
        default=[],
        metavar="A-B",
        help="stage difference, e.g. rw_afa_label-par_label",
    )
    p.add_argument("--errors", action="store_true", help="a table of the kinds of error per stage")
    p.add_argument("--confusion", choices=STAGES, metavar="STAGE", help="which class takes which, for STAGE")
    p.add_argument("--steps", action="append", default=[], choices=STAGES, metavar="STAGE",
                   help="each file's STAGE minus the previous file's, paired (an ablation's rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split",
        action="store_true",
        help="FILES are FULL.json SUMMARY.json: write the summary "
        "(no per_image) to SUMMARY.json and gzip FULL.json in place",
    )
    args = p.parse_args(argv)
    if args.split:
        full, summary = args.files
        data = read_results(full)
        with open(summary, "w") as fh:
            json.dump({k: v for k, v in data.items() if k != "per_image"}, fh, indent=2)
        with gzip.open(full + ".gz", "wt") as fh:
            json.dump(data, fh, separators=(",", ":"))
        Path(full).unlink()
        return 0
    rng = np.random.default_rng(args.seed)
    loaded = []
    for item in args.files:
        name, _, path = item.partition("=")
        path = path or name
        loaded.append((name, read_results(path)))
    draws_cache: dict[int, np.ndarray] = {}

    def draws_for(n: int) -> np.ndarray | None:
        """The bootstrap draws for ``n`` images, the same for every file of ``n`` (None: no --bootstrap)."""
        if not args.bootstrap:
            return None
        if n not in draws_cache:
            draws_cache[n] = rng.integers(0, n, size=(args.bootstrap, n))
        return draws_cache[n]

    print("| model | " + " | ".join(STAGES) + " | cls F1 | images |")
    print("|---" * (len(STAGES) + 3) + "|")
    for name, data in loaded:
        cells = []
        for stage in STAGES:
            entry = data["stages"].get(stage)
            if not entry or entry.get("miou") is None:
                cells.append("-")
                continue
            cell = f"{100 * entry['miou']:.1f}"
            counts = per_image_counts(data, stage) if args.bootstrap else None
            if counts is not None:
                lo, hi = np.percentile(bootstrap(counts, draws_for(len(counts[0]))), [2.5, 97.5]) * 100
                cell += f" [{lo:.1f}, {hi:.1f}]"
            cells.append(cell)
        f1 = data.get("cls_f1")
        print(
            f"| {name} | " + " | ".join(cells) + f" | {100 * f1:.1f} | {data.get('n_images', '?')} |"
            if f1 is not None
            else f"| {name} | " + " | ".join(cells) + f" | - | {data.get('n_images', '?')} |"
        )
    if args.errors:
        print_errors(loaded)
    if args.confusion:
        print_confusion(loaded, args.confusion)
    for gain in args.gain:
        a, _, b = gain.partition("-")
        print(f"\n{a} - {b} (mIoU points, 95 % paired bootstrap interval):")
        for name, data in loaded:
            ma, mb = per_image_counts(data, a), per_image_counts(data, b)
            if ma is None or mb is None or a not in data["stages"] or b not in data["stages"]:
                continue
            diff = 100 * (data["stages"][a]["miou"] - data["stages"][b]["miou"])
            print(f"- {name}: {diff:+.1f}{paired_interval(ma, mb, draws_for(len(ma[0])))}")
    for stage in args.steps:
        print_steps(loaded, stage, draws_for)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "scripts/results_table.py"))
