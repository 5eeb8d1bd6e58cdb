"""`onetok data shapes` and `onetok data images`: write WebDataset shards."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onetok.fileio import UserError, staged_dir
from onetok.scripts.arg_types import finite_float, seed

MAX_SIZE = 4096  # image side, px
MAX_IMAGES = 10_000_000  # per split


def _check_count(flag: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UserError(f"{flag} {value}: must be in {low}..{high:,}")


def cmd_shapes(args: argparse.Namespace) -> int:
    _check_count("--size", args.size, 8, MAX_SIZE)
    _check_count("--train", args.train, 0, MAX_IMAGES)
    _check_count("--val", args.val, 0, MAX_IMAGES)
    _check_count("--shard-size", args.shard_size, 1, MAX_IMAGES)
    if args.train + args.val == 0:
        raise UserError("--train 0 --val 0: nothing to write")
    if not 0.0 <= args.holdout_combos < 1.0:
        raise UserError(f"--holdout-combos {args.holdout_combos}: must be in [0, 1)")
    from onetok.data.shapes import write_shapes_dataset
    from onetok.scripts.progress import progress

    out = Path(args.out)
    start = time.time()
    with staged_dir(out, args.force) as tmp, progress(args.train + args.val, "shapes", quiet=args.quiet) as bar:
        summary = write_shapes_dataset(tmp, args.size, args.train, args.val, args.seed, args.shard_size,
                                       args.holdout_combos, progress=bar.update)
    held = len(summary["holdout_combos"])
    print(f"wrote {args.train} train + {args.val} val images ({args.size}px) to {out} in {time.time() - start:.1f}s"
          + (f"; {held} held-out (color, shape, position) combos in val only" if held else ""))
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    src = Path(args.src)
    if not src.is_dir():
        raise UserError(f"{src}: not a readable folder")
    _check_count("--size", args.size, 8, MAX_SIZE)
    _check_count("--shard-size", args.shard_size, 1, MAX_IMAGES)
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    from onetok.data.convert import convert_images, list_inputs, not_images
    from onetok.scripts.folder_runs import ignored_note
    from onetok.scripts.progress import progress

    out = Path(args.out)
    total, others = len(list_inputs(src)[0]), not_images(src)
    if total == 0:
        raise UserError(f"{src}: no image files (by name or content)"
                        + (f"; {len(others)} other file(s), e.g. {others[0]}" if others else ""))
    with staged_dir(out, args.force, inputs=[src]) as tmp:
        with progress(total, "images", unit="file", quiet=args.quiet) as bar:
            summary = convert_images(src, tmp, args.size, args.shard_size, args.val_fraction, args.format,
                                     progress=bar.update)
        if summary.written == 0:
            raise UserError(f"{src}: no readable images, nothing written: all {summary.skipped} file(s) skipped; "
                            f"first: {summary.skipped_files[0]}")
        for line in summary.skipped_files:
            print(f"skipped {line}", file=sys.stderr)
    print(f"written: {summary.written}, skipped: {summary.skipped} (unreadable) -> {out}")
    ignored_note(others)
    return 1 if summary.skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="write WebDataset shards (built-in shapes, or your own images)",
                          description="Write image datasets as WebDataset shards (OUT/train/*.tar, OUT/val/*.tar).")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="KIND")

    p = data_sub.add_parser("shapes", help="the built-in captioned shapes dataset",
                            description="Render the built-in captioned shapes dataset (one shape of a colour, size "
                                        "and position on a plain background) into OUT/train and OUT/val.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (gets train/ and val/)")
    p.add_argument("--size", type=int, default=32, help=f"image side in px, 8..{MAX_SIZE} (default %(default)s)")
    p.add_argument("--train", type=int, default=20000, metavar="N", help="training images (default %(default)s)")
    p.add_argument("--val", type=int, default=1000, metavar="N", help="validation images (default %(default)s)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=5000, metavar="N", help="samples per shard (default %(default)s)")
    p.add_argument("--holdout-combos", type=finite_float, default=0.0, metavar="F",
                   help="fraction in [0, 1) of (color, shape, position) combos kept out of train and used only in "
                        "val (default %(default)g)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_shapes)

    p = data_sub.add_parser("images", help="a folder of JPEG/PNG/WebP files (+ same-named .txt captions)",
                            description="Convert a folder of your own images (+ same-named .txt captions) into "
                                        "shards; unreadable files are skipped and listed (exit code 1).")
    p.add_argument("src", metavar="SRC", help="folder of images (searched recursively; .txt/.json are captions and "
                                              "metadata, not images)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (gets train/ and, with "
                                                               "--val-fraction, val/)")
    p.add_argument("--size", type=int, default=256, help=f"square side after resize + centre crop, 8..{MAX_SIZE} "
                                                         "(default %(default)s)")
    p.add_argument("--shard-size", type=int, default=5000, metavar="N", help="samples per shard (default %(default)s)")
    p.add_argument("--val-fraction", type=finite_float, default=0.0, metavar="F",
                   help="fraction in [0, 1) of the files (by file-name hash) written to val/ (default %(default)g)")
    p.add_argument("--format", choices=["png", "jpg"], default="png",
                   help="how images are stored in the shards (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder (never SRC)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_images)
