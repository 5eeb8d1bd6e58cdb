"""`onetok bench codec`: parse, load the codecs, call `onetok.tokenizers.codec.bench.codec_speed` and print."""

from __future__ import annotations

import argparse
import json

from onetok.fileio import UserError
from onetok.tokenizers.codec import defaults


def _size(text: str) -> tuple[int, int]:
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"--size {text}: expected WxH, e.g. 768x512") from None
    return size


def model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    parser.add_argument("--prior", metavar="DIR", help="the entropy coder's prior (default: the one beside the tokenizer)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    w, h = defaults.BENCH_SIZE
    model_flags(parser)
    parser.add_argument("--image", metavar="PATH", help="the photo (default: the bundled sample)")
    parser.add_argument("--size", default=f"{w}x{h}", metavar="WxH", help="crop/pad the photo to this size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=defaults.BENCH_REPEATS, metavar="N",
                        help="timed runs per case (median; default %(default)s)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from onetok.scripts.cmd_codec import load_codec
    from onetok.tokenizers.codec import bench

    size = _size(args.size)
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--repeats and --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = {"packed": load_codec(args.tokenizer, entropy=False)}
    entropy = load_codec(args.tokenizer, args.prior)
    if entropy.prior is not None:
        codecs["entropy"] = entropy
    rows = bench.codec_speed(codecs, bench.bench_image(args.image, size), args.repeats)
    print(json.dumps([r._asdict() for r in rows], indent=1) if args.json else bench.format_speed(rows, size,
                                                                                                  args.repeats))
    return 0
