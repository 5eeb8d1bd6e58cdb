"""`onetok bench portable-coder`: the portable entropy coder (payload 2, integer prior) against the float coder of
onetok 0.1 (payload 1), in one run -- the saving over bit-packed ids per photo, and the speed on the bench photo.
Parses, loads the codec, calls `onetok.tokenizers.codec.bench` and prints."""

from __future__ import annotations

import argparse

from onetok.fileio import UserError
from onetok.scripts.bench_codec import model_flags
from onetok.tokenizers.codec import defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_flags(parser)
    parser.add_argument("--photos", default=defaults.PHOTOS, metavar="DIR",
                        help="folder of photos for the saving (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.PORTABLE_REPEATS, metavar="N",
                        help="timed runs per case (median and minimum; default %(default)s)")
    parser.add_argument("--part", choices=("all", "savings", "speed"), default="all",
                        help="what to measure (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from onetok.scripts.cmd_codec import load_codec
    from onetok.tokenizers.codec import bench

    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.part != "speed" and not Path(args.photos).is_dir():
        raise UserError(f"--photos {args.photos}: not a folder")
    codec = load_codec(args.tokenizer, args.prior)
    if codec.prior is None:
        raise UserError("the tokenizer has no prior beside it: pass --prior DIR")
    if args.part != "speed":
        print(f"saving over bit-packed ids, mean per photo, photos of {args.photos}:")
        show = lambda name, found: print(f"  {name}: " + ", ".join(  # noqa: E731
            f"{c} k={k} {v:.1%}" for (c, k), v in found.items()), flush=True)
        for (name, k), value in sorted(bench.portable_savings(codec, args.photos, show).items()):
            print(f"  {name:8s} coder, --tokens {k:2d}: {value:.1%}")
    if args.part != "savings":
        w, h = defaults.BENCH_SIZE
        print(f"speed on the {w}x{h} bench photo (median / min of {args.repeats} s):")
        print(bench.format_portable_speed(bench.portable_speed(codec, bench.bench_image(), args.repeats)))
    return 0
