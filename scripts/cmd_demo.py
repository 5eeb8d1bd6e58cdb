"""`onetok demo` (what `make demo` runs): the pipeline end to end on the built-in shapes data, then the built-in
photo codec and natural-image model (`onetok.demo`); `--fresh` starts over, a re-run skips the finished steps.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from onetok.fileio import UserError, check_place


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.train_images < 1 or args.val_images < 1:
        raise UserError("--train-images and --val-images must be at least 1")
    check_place(out)  # never the current folder or one above it (--fresh deletes the demo folder)
    if args.fresh and out.exists() and any(out.iterdir()) and not (out / ".done").is_dir():
        raise UserError(f"{out}: not a demo folder (no .done/ inside); --fresh deletes only demo folders")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    (out / ".done").mkdir(parents=True, exist_ok=True)  # marks a demo folder from its first step on
    from onetok.demo import Demo

    Demo(out, args.train_images, args.val_images, args.quick).all()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the end-to-end demo on the built-in shapes data (what `make demo` runs)",
                       description="Data, tokenizer, tokenize, AR model, sampling, evaluation, compression and a "
                                   "report (OUT/report.md); a re-run skips finished steps, a killed training resumes.")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="folder for everything the demo makes (default %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing finished steps")
    p.add_argument("--train-images", type=int, default=20000, metavar="N",
                   help="shapes training images (default %(default)s)")
    p.add_argument("--val-images", type=int, default=1000, metavar="N", help="shapes validation images (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a few training steps only (a smoke test of the pipeline)")
    p.set_defaults(func=cmd_demo)
