"""``python -m core.data.scenes``: generate the scenes benchmark. With no option but ``--out``,
it writes THE benchmark (the canonical settings: ``SceneOptions()`` defaults, 3000 train and 300
val images, seed 0)."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from core.data.scenes.compose import SceneOptions
from core.data.scenes.ensure import benchmark_differences
from core.data.scenes.sprites import CLASS_SETS
from core.data.scenes.writer import DEFAULT_TRAIN, DEFAULT_VAL, contact_sheet, generate_dataset, read_meta
from core.errors import ArgumentParser, UserError, run_cli


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad options or a missing source give one line on stderr and exit code 2."""
    return run_cli(lambda: _main(argv), "python -m core.data.scenes")


def check(folder: Path) -> int:
    """``--check``: 0 when ``folder`` is the canonical benchmark as this code draws it, else 1 with
    the differences on stdout; a folder without a finished dataset is bad input (exit 2)."""
    meta = read_meta(folder)
    changed = benchmark_differences(meta)
    print("\n".join(changed) if changed else f"{folder} is the benchmark (version {meta['version']})")
    return 1 if changed else 0


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(
        prog="python -m core.data.scenes",
        description="Generate the scenes benchmark: Fashion-MNIST items on cluttered backgrounds.",
    )
    d = SceneOptions()
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="output folder (created)")
    what.add_argument("--check", metavar="FOLDER",
                      help="only check FOLDER: exit 0 when it is the benchmark this code draws, 1 (and "
                      "why) when it holds other data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="number of training images")
    parser.add_argument("--val", type=int, default=DEFAULT_VAL, help="number of validation images")
    parser.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument("--scale-min", type=float, default=d.scale_min, help="smallest item enlargement")
    parser.add_argument("--scale-max", type=float, default=d.scale_max, help="largest item enlargement")
    parser.add_argument("--clutter", type=float, default=d.clutter, help="clutter density (0 = none)")
    parser.add_argument(
        "--clutter-solid-max",
        type=float,
        default=d.clutter_solid_max,
        help="largest filled clutter shape, a fraction of the image side (1 = as drawn, item-sized)",
    )
    parser.add_argument(
        "--occlusion", type=float, default=d.occlusion, help="largest hidden fraction of an item"
    )
    parser.add_argument("--min-pixels", type=int, default=d.min_pixels, help="pixels a class needs")
    parser.add_argument("--texture", type=float, default=d.texture, help="probability of a patterned item")
    parser.add_argument("--max-rotation", type=float, default=d.max_rotation, help="item rotation, degrees")
    parser.add_argument(
        "--camouflage",
        type=float,
        default=d.camouflage,
        help="share of images whose items use the background's colours",
    )
    parser.add_argument("--classes", default=d.class_set, choices=sorted(CLASS_SETS), help="class set")
    parser.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    parser.add_argument(
        "--source",
        default=None,
        help="folder of Fashion-MNIST idx files, or 'procedural' (default: Debian's dataset-fashion-mnist)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (same bytes for any number)")
    parser.add_argument("--preview", default=None, help="save a contact sheet PNG")
    args = parser.parse_args(argv)
    if args.check is not None:
        return check(Path(args.check))
    if args.train < 0 or args.val < 0 or args.train + args.val < 1:
        raise UserError(f"--train and --val must be >= 0 and not both 0, got {args.train} and {args.val}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    opts = SceneOptions(
        size=args.size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        clutter=args.clutter,
        clutter_solid_max=args.clutter_solid_max,
        occlusion=args.occlusion,
        min_pixels=args.min_pixels,
        texture=args.texture,
        max_rotation=args.max_rotation,
        camouflage=args.camouflage,
        class_set=args.classes,
        quality=args.quality,
    )
    start = time.perf_counter()
    meta = generate_dataset(
        args.out, args.seed, args.train, args.val, opts, args.source, log=print, workers=args.workers
    )
    took = time.perf_counter() - start
    print(
        f"wrote {args.train} train + {args.val} val images ({meta['source']}) to {args.out} in {took:.1f} s"
    )
    if args.preview:
        names = [f"val_{i:06d}" for i in range(min(args.val, 16))] or [f"train_{i:06d}" for i in range(16)]
        Image.fromarray(contact_sheet(args.out, names)).save(args.preview)
        print(f"preview: {args.preview}")
    return 0
