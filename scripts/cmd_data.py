"""`onetok data shapes` and `onetok data images`: write WebDataset shards."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from onetok.fileio import UserError, replace_dir, staging_dir


def cmd_shapes(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.data.shapes import write_shapes_dataset

    if args.size < 8:
        raise UserError(f"--size {args.size}: must be at least 8")
    if args.train < 0 or args.val < 0 or args.shard_size < 1:
        raise UserError("--train/--val must be >= 0 and --shard-size >= 1")
    if not 0.0 <= args.holdout_combos < 1.0:
        raise UserError(f"--holdout-combos {args.holdout_combos}: must be in [0, 1)")
    out = Path(args.out)
    tmp = staging_dir(out, args.force)
    start = time.time()
    try:
        with tqdm(total=args.train + args.val, desc="shapes", unit="img", disable=args.quiet) as bar:
            summary = write_shapes_dataset(tmp, args.size, args.train, args.val, args.seed, args.shard_size,
                                           args.holdout_combos, progress=bar.update)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    held = len(summary["holdout_combos"])
    print(f"wrote {args.train} train + {args.val} val images ({args.size}px) to {out} in {time.time() - start:.1f}s"
          + (f"; {held} held-out (color, shape, position) combos in val only" if held else ""))
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.data.convert import convert_images, list_inputs

    src = Path(args.src)
    if not src.is_dir():
        raise UserError(f"{src}: not a readable folder")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    out = Path(args.out)
    tmp = staging_dir(out, args.force)
    try:
        total = len(list_inputs(src)[0])
        with tqdm(total=total, desc="images", unit="file", disable=args.quiet) as bar:
            summary = convert_images(src, tmp, args.size, args.shard_size, args.val_fraction, args.format,
                                     progress=bar.update)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for path in summary.skipped_files:
        print(f"skipped: {path}")
    print(f"written: {summary.written}, skipped: {summary.skipped} -> {out}")
    return 0 if summary.written > 0 or total == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="write WebDataset shards (built-in shapes, or your own images)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="KIND")

    p = data_sub.add_parser("shapes", help="the built-in captioned shapes dataset")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--size", type=int, default=32, help="image side in px (default 32)")
    p.add_argument("--train", type=int, default=20000, help="training images (default 20000)")
    p.add_argument("--val", type=int, default=1000, help="validation images (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    p.add_argument("--holdout-combos", type=float, default=0.0, metavar="F",
                   help="fraction of (color, shape, position) combos kept out of train and used only in val")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_shapes)

    p = data_sub.add_parser("images", help="a folder of JPEG/PNG/WebP files (+ same-named .txt captions)")
    p.add_argument("src", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=256, help="square side after resize + centre crop")
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction (by file-name hash) written to val/")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="how images are stored in the shards")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_images)
