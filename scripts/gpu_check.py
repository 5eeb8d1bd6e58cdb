"""`python -m onetok.scripts.gpu_check --out DIR ...`: the prepared GPU check (`onetok.bench.gpu_check`), one JSON and
one markdown file in DIR. `make gpu-check` (scripts/gpu_check.sh) installs the checkout and runs this."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onetok.bench.defaults import GPU_CHECK_DEADLINE_S
from onetok.scripts.arg_types import finite_float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from onetok.bench.gpu_check import SECTIONS

    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="on CPU at toy sizes, skipping what needs CUDA")
    parser.add_argument("--model", help="a unified model directory for `sampling_trained` (default: train one)")
    parser.add_argument("--natural-model", help="the unified model folder of `natural_model` (default: the "
                        "built-in natural-image model, ar_model/pretrained/cifar10)")
    parser.add_argument("--reference", help="a bytedance/1d-tokenizer checkout for `tokenizer_reference` "
                        "(default: third_party/1d-tokenizer of --checkout)")
    parser.add_argument("--checkout", default=".", help="the onetok checkout whose tests/ and third_party/ are read "
                        "(default: the current folder)")
    parser.add_argument("--deadline-s", type=finite_float, default=GPU_CHECK_DEADLINE_S,
                        help="stop by then (default %(default)s)")
    parser.add_argument("--only", help="comma-separated sections to run (default all): "
                        + ", ".join(s.name for s in SECTIONS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from onetok.bench.gpu_check import CheckOptions, run_check
    from onetok.bench.gpu_report import markdown

    args = parse_args(argv)
    if not (Path(args.checkout) / "tests").is_dir():
        print(f"gpu_check: --checkout {args.checkout}: not an onetok checkout (no tests/ folder)", file=sys.stderr)
        return 2
    options = CheckOptions(out=Path(args.out), dry_run=args.dry_run, deadline_s=args.deadline_s,
                           only=set(args.only.split(",")) if args.only else None, model=args.model,
                           natural_model=args.natural_model, reference=args.reference, checkout=Path(args.checkout),
                           argv=sys.argv[1:] if argv is None else list(argv))
    try:
        report, code = run_check(options)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    print(markdown(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
