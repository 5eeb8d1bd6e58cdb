"""The `onetok` command: one entry point, one sub-command module per concern.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its sub-commands and sets
`func=` on each parser. Modules import their heavy dependencies (torch, lightning) inside the command
functions so `onetok --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from onetok.fileio import UserError

COMMAND_MODULES = [
    "onetok.scripts.cmd_data",        # data shapes | data images
    "onetok.scripts.cmd_export",      # export
    "onetok.scripts.cmd_codec",       # compress | decompress | eval-compression
    "onetok.scripts.cmd_ar",          # tokenize | sample | caption | eval-ar
    "onetok.scripts.cmd_text_vocab",  # text-vocab train
    "onetok.scripts.cmd_eval",        # eval-tokenizer
    "onetok.scripts.cmd_bench",       # bench tokenizer | kernels | sjd
    "onetok.scripts.cmd_demo",        # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onetok", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # a sub-command module not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as err:
        print(f"onetok {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"onetok {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
