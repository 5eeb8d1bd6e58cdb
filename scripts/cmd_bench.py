"""`onetok bench tokenizer | kernels | sjd | codec | data | startup`: benchmarks that print ratios against a baseline in the
same run.

The measuring is library code (`onetok.bench`, defaults in `onetok.bench.defaults`); each bench here parses its
options, calls one library function and prints its report (tables, or `--json`). Every count (iterations, batch
sizes, threads, prompts, ...) must be a positive integer (warm-up rounds may be 0), which argparse enforces with a
one-line error naming the flag, and every option gets a help text stating its default.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from typing import NamedTuple

from onetok.bench import defaults as d
from onetok.scripts.arg_types import positive_ints

# the smallest value of each count option, by destination name, whichever bench defines it
COUNTS = {"iters": 1, "rounds": 1, "repeats": 1, "warmup": 0, "batch_cpu": 1, "batch_gpu": 1, "batch": 1,
          "threads": 1, "prompts": 1, "window": 1, "image_tokens": 1, "runs": 1, "omp_threads": 1,
          "ranks": 1, "workers": 0, "tokens": 1, "codebook": 2, "buffer": 1}
HELP = {"batch_cpu": "images per forward pass on the CPU", "batch_gpu": "images per forward pass on CUDA",
        "iters": "timed iterations", "codebook": "codebook size", "batch": "rows per batch",
        "json": "print the results as JSON", "warmup": "untimed warm-up iterations", "seed": "random seed",
        "threads": "torch CPU threads (default: torch's choice)"}


class Bench(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _print(report, as_json: bool, format_text: Callable) -> int:
    print(json.dumps(report, indent=1) if as_json else format_text(report))
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------------
# tokenizer, kernels
# --------------------------------------------------------------------------------------------------------------------


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=d.TOKENIZER_PRESET, help="a preset of onetok.tokenizers.model.PRESETS")
    p.add_argument("--batch-cpu", type=int, default=d.TOKENIZER_BATCH["cpu"])
    p.add_argument("--batch-gpu", type=int, default=d.TOKENIZER_BATCH["cuda"])
    p.add_argument("--rounds", type=int, default=d.TOKENIZER_ROUNDS,
                   help=f"timed rounds, medians reported (default %(default)s; on CUDA at least "
                        f"{d.TOKENIZER_MIN_CUDA_ROUNDS})")
    p.add_argument("--threads", type=int)
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="encode/decode compute dtype (default auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall clock, or process CPU time (steadier on a machine shared with other jobs; with "
                        "--threads 1 it is the pure compute time)")
    p.add_argument("--reference", metavar="DIR",
                   help="a local bytedance/1d-tokenizer checkout to time side by side (CPU; skipped if absent)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement even if CUDA is available")
    p.add_argument("--json", action="store_true")


def _tokenizer(args: argparse.Namespace) -> int:
    from onetok.bench import tokenizer_speed

    _set_threads(args.threads)
    report = tokenizer_speed.tokenizer_report(args.preset, args.batch_cpu, args.batch_gpu, args.rounds, args.dtype,
                                              args.clock, args.reference, gpu=not args.no_gpu)
    return _print(report, args.json, tokenizer_speed.format_report)


def _kernels_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a reduced grid (always the case without CUDA)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--repeats", type=int, help=f"timed runs per case (default {d.KERNEL_REPEATS['cuda']} on CUDA, "
                                               f"{d.KERNEL_REPEATS['cpu']} on CPU)")
    p.add_argument("--threads", type=int)
    p.add_argument("--dtypes", help=f"comma-separated input dtypes of fp32, bf16, fp16 (default: "
                                    f"{d.KERNEL_DTYPES['cpu']} on CPU, {d.KERNEL_DTYPES['cuda']} on CUDA)")
    p.add_argument("--metrics", default=d.KERNEL_METRICS, help="comma-separated: euclidean, cosine")
    p.add_argument("--seed", type=int, default=0)


def _kernels(args: argparse.Namespace) -> int:
    from onetok.bench import kernel_speed

    _set_threads(args.threads)
    report = kernel_speed.kernel_report(args.quick, args.repeats, args.dtypes, args.metrics, args.seed)
    return _print(report, args.json, kernel_speed.format_tables)


# --------------------------------------------------------------------------------------------------------------------
# sjd, data, startup
# --------------------------------------------------------------------------------------------------------------------


def _sjd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="unified model directory (onetok export)")
    p.add_argument("--prompts", type=int, default=d.SJD_PROMPTS, help="number of prompts")
    p.add_argument("--prompts-file", help="text file, one prompt per line (default: shapes captions)")
    p.add_argument("--window", type=int, help="SJD draft window (default: as `onetok sample --sjd`)")
    p.add_argument("--init", choices=("uniform", "prev"), default="uniform", help="SJD draft initialisation")
    p.add_argument("--batch", type=int, default=d.SJD_BATCH, help="prompts decoded together")
    p.add_argument("--image-tokens", type=int, help="draw k <= L image tokens (default L)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: as `onetok sample`)")
    p.add_argument("--temperature", type=float, help="(default: as `onetok sample`)")
    p.add_argument("--top-k", type=int, help="(default: as `onetok sample`)")
    p.add_argument("--top-p", type=float, help="(default: as `onetok sample`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--threads", type=int)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="transformer weights and KV cache (RoPE tables and logits stay fp32); bf16 also decodes the "
                        "images in bf16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer (mode reduce-overhead: CUDA graphs on a GPU)")
    p.add_argument("--profile", action="store_true", help="also count operators and host syncs per pass")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _sjd(args: argparse.Namespace) -> int:
    from onetok.scripts.devices import choose_device
    from onetok.scripts.sampling_args import check_sampling_flags, sampling_settings

    check_sampling_flags(args)  # before the model loads
    from onetok.bench import sjd_speed

    _set_threads(args.threads)
    options = sjd_speed.SjdOptions(
        model=args.model, device=choose_device(args.device), prompts=args.prompts, prompts_file=args.prompts_file,
        window=args.window, init=args.init, batch=args.batch, image_tokens=args.image_tokens, seed=args.seed,
        dtype=args.dtype, compile=args.compile, profile=args.profile)
    report = sjd_speed.sjd_report(options, lambda recommended: sampling_settings(args, recommended))
    print(json.dumps(report) if args.json else sjd_speed.format_report(report))
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=positive_ints, default=d.DATA_SIZES,
                   help="token-set sizes (samples), comma-separated (default %(default)s)")
    p.add_argument("--tokens", type=int, default=d.DATA_TOKENS, help="codes per image (L)")
    p.add_argument("--codebook", type=int, default=d.DATA_CODEBOOK)
    p.add_argument("--ranks", type=int, default=d.DATA_RANKS, help="processes (ranks), each reading its share")
    p.add_argument("--workers", type=int, default=d.DATA_WORKERS,
                   help="loader workers per rank (0: the rank reads in its own process, so its RSS is all of it)")
    p.add_argument("--batch", type=int, default=d.DATA_BATCH)
    p.add_argument("--buffer", type=int, default=d.DATA_BUFFER, help="shuffle buffer of the streamed mode")
    p.add_argument("--dir", help="where to write the token folders (default: a temp dir)")
    p.add_argument("--json", action="store_true")


def _data(args: argparse.Namespace) -> int:
    from onetok.bench import data_memory

    results = data_memory.data_memory_report(args.sizes, args.tokens, args.codebook, args.ranks, args.workers,
                                             args.batch, args.buffer, args.dir)
    return _print(results, args.json, lambda r: data_memory.format_report(r, args.ranks, args.workers, args.tokens,
                                                                          args.batch, args.buffer))


def _startup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=d.STARTUP_RUNS, metavar="N", help="rounds; medians are reported")
    p.add_argument("--model", metavar="DIR", help="unified model for caption (default: a random demo-size one)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for compress (default: the built-in photo "
                                                      "tokenizer, else a random one of the photo preset)")
    p.add_argument("--omp-threads", type=int, metavar="N", help="OMP_NUM_THREADS of the timed processes "
                                                                "(default: inherited)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _startup(args: argparse.Namespace) -> int:
    from onetok.bench import startup

    report = startup.startup_report(args.runs, args.model, args.tokenizer, args.omp_threads)
    return _print(report, args.json, startup.format_report)


def _module_bench(name: str, help_text: str) -> Bench | None:
    """A bench whose CLI module provides add_arguments(parser) and run(args) (None: not in this build)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return None
    return Bench(help_text, module.add_arguments, module.run)


def benches() -> dict[str, Bench | None]:
    return {
        "tokenizer": Bench("encode/decode throughput of the tokenizer", _tokenizer_args, _tokenizer),
        "kernels": Bench("nearest-code search and SJD verify vs torch baselines", _kernels_args, _kernels),
        "sjd": Bench("speculative Jacobi decoding vs plain sampling", _sjd_args, _sjd),
        "codec": _module_bench("onetok.scripts.bench_codec", "compress/decompress time of one photo vs Pillow's WebP"),
        "portable-coder": _module_bench("onetok.scripts.bench_portable_coder", "the portable entropy coder vs the float coder"),
        "data": Bench("peak memory per rank of AR token data: in memory vs streamed", _data_args, _data),
        "startup": Bench("start-up of the onetok commands: error paths, caption, compress", _startup_args, _startup),
    }


# --------------------------------------------------------------------------------------------------------------------
# The parsers
# --------------------------------------------------------------------------------------------------------------------


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
        stated = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if stated and "default" not in action.help:  # 0 is a default to state; a flag's False is not
            action.help += " (default %(default)s)"


def _check_preset(args: argparse.Namespace) -> None:
    from onetok.fileio import UserError

    if getattr(args, "preset", None) is None:
        return
    from onetok.tokenizers import PRESETS

    if args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset}: unknown (choose from {', '.join(sorted(PRESETS))})")


def _runner(bench: Bench):
    def run(args: argparse.Namespace) -> int:
        _check_preset(args)
        return bench.run(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (speed, memory) with ratios against baselines",
                           description="Benchmarks that print speed or memory with ratios against a baseline timed "
                                       "in the same run.")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name, entry in benches().items():
        if entry is None:
            p = bench_sub.add_parser(name, help="not available in this build")
            p.set_defaults(func=lambda a, n=name: print(f"bench {n}: not available in this build") or 1)
            continue
        p = bench_sub.add_parser(name, help=entry.help, description=entry.help[0].upper() + entry.help[1:] + ".")
        entry.add_arguments(p)
        harden(p)
        p.set_defaults(func=_runner(entry))
