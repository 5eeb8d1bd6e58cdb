"""`onetok bench tokenizer | kernels | sjd | data`: benchmarks that print ratios against a baseline in the same run."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "tokenizer": ("onetok.scripts.bench_tokenizer", "encode/decode throughput of the tokenizer"),
    "kernels": ("onetok.scripts.bench_kernels", "nearest-code search and SJD verify vs torch baselines"),
    "sjd": ("onetok.scripts.bench_sjd", "speculative Jacobi decoding vs plain sampling"),
    "codec": ("onetok.scripts.bench_codec", "compress/decompress time of one photo vs Pillow's WebP"),
    "data": ("onetok.scripts.bench_data", "peak memory per rank of AR token data: in memory vs streamed"),
}


def _run(args: argparse.Namespace) -> int:
    return importlib.import_module(BENCHES[args.bench][0]).run(args)


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (speed, memory) with ratios against baselines")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name, (module_name, help_text) in BENCHES.items():
        p = bench_sub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            p.set_defaults(func=lambda a, n=name: print(f"bench {n}: not available in this build") or 1)
            continue
        module.add_arguments(p)
        p.set_defaults(func=_run)
