"""`onetok bench tokenizer | kernels | sjd | codec | data | startup`: benchmarks that print ratios against a baseline in the
same run.

Each bench module adds its own options; this module checks them all the same way: every count (iterations, batch
sizes, threads, prompts, ...) must be a positive integer (warm-up rounds may be 0), which argparse enforces with a
one-line error naming the flag, and options without a help text or a stated default get one.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "tokenizer": ("onetok.scripts.bench_tokenizer", "encode/decode throughput of the tokenizer"),
    "kernels": ("onetok.scripts.bench_kernels", "nearest-code search and SJD verify vs torch baselines"),
    "sjd": ("onetok.scripts.bench_sjd", "speculative Jacobi decoding vs plain sampling"),
    "codec": ("onetok.scripts.bench_codec", "compress/decompress time of one photo vs Pillow's WebP"),
    "data": ("onetok.scripts.bench_data", "peak memory per rank of AR token data: in memory vs streamed"),
    "startup": ("onetok.scripts.bench_startup", "start-up of the onetok commands: error paths, caption, compress"),
}

# the smallest value of each count option, by destination name, whichever bench defines it
COUNTS = {"iters": 1, "rounds": 1, "repeats": 1, "warmup": 0, "batch_cpu": 1, "batch_gpu": 1, "batch": 1,
          "threads": 1, "prompts": 1, "window": 1, "image_tokens": 1, "runs": 1,
          "ranks": 1, "workers": 0, "tokens": 1, "codebook": 2, "buffer": 1}
HELP = {"batch_cpu": "images per forward pass on the CPU", "batch_gpu": "images per forward pass on CUDA",
        "iters": "timed iterations", "codebook": "codebook size", "batch": "rows per batch",
        "json": "print the results as JSON", "warmup": "untimed warm-up iterations", "seed": "random seed"}


def at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def harden(parser: argparse.ArgumentParser) -> None:
    """Bounded counts, finite numbers, seeds in range, a help text for every option, and its default stated."""
    from onetok.scripts.arg_types import finite_float, seed

    for action in parser._actions:
        if action.dest in COUNTS and action.type is int:
            action.type = at_least(COUNTS[action.dest])
        elif action.type is float:  # inf and nan are refused like any other non-number
            action.type = finite_float
        elif action.dest == "seed" and action.type is int:
            action.type = seed
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        if not action.help:
            action.help = HELP.get(action.dest, action.dest.replace("_", " "))
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
            action.help += f" (default {action.default})"


def _check_preset(args: argparse.Namespace) -> None:
    from onetok.fileio import UserError

    if getattr(args, "preset", None) is None:
        return
    from onetok.tokenizers import PRESETS

    if args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset}: unknown (choose from {', '.join(sorted(PRESETS))})")


def _run(args: argparse.Namespace) -> int:
    _check_preset(args)
    return importlib.import_module(BENCHES[args.bench][0]).run(args)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (speed, memory) with ratios against baselines",
                           description="Benchmarks that print speed or memory with ratios against a baseline timed "
                                       "in the same run.")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name, (module_name, help_text) in BENCHES.items():
        p = bench_sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            p.set_defaults(func=lambda a, n=name: print(f"bench {n}: not available in this build") or 1)
            continue
        module.add_arguments(p)
        harden(p)
        p.set_defaults(func=_run)
