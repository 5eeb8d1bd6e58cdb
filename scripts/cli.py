"""The `onetok` command: one entry point, one sub-command module per concern.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its sub-commands and sets
`func=` on each parser. Modules import their heavy dependencies (torch, lightning) inside the command
functions, after the arguments and paths are checked, so `onetok --help` and a mistyped path answer at once.

Every failure a user can cause or meet -- a bad flag value, a missing or unreadable file, an unwritable or full
output location, an interrupted run -- ends in one line on stderr naming the flag or file, and exit code 2
(130 after Ctrl-C, 143 after SIGTERM); a traceback means a bug in onetok. `ONETOK_DEBUG=1` shows the traceback of
an OSError or ValueError too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

from onetok import __version__
from onetok.fileio import UserError

COMMAND_MODULES = [
    "onetok.scripts.cmd_data",        # data shapes | data images
    "onetok.scripts.cmd_export",      # export
    "onetok.scripts.cmd_codec",       # compress | decompress | eval-compression
    "onetok.scripts.cmd_recode",      # recode
    "onetok.scripts.cmd_ar",          # tokenize | sample | caption
    "onetok.scripts.cmd_eval_ar",     # eval-ar
    "onetok.scripts.cmd_text_vocab",  # text-vocab train
    "onetok.scripts.cmd_eval",        # eval-tokenizer
    "onetok.scripts.cmd_judge",       # judge train | eval
    "onetok.scripts.cmd_bench",       # bench tokenizer | kernels | sjd | codec | startup
    "onetok.scripts.cmd_demo",        # demo
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `onetok compress: error: argument --tokens: ... (see --help)`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="onetok", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onetok {__version__}")
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


def import_torch() -> None:
    """Import torch for a command that loads a model, the fast way: einx (imported by vector_quantize_pytorch, our
    FSQ/LFQ) registers its torch backend at once when torch is already loaded -- importing torch._dynamo, about 1 s
    -- but lazily, on its first use, when einx comes first; inference never uses it. `onetok bench startup` measures
    the difference."""
    if "torch" not in sys.modules:
        try:
            import einx  # noqa: F401
        except ImportError:  # a build without vector_quantize_pytorch
            pass
    import torch  # noqa: F401


def _one_line(text: str) -> str:
    """Multi-line library messages (e.g. load_state_dict's) joined into one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe(err: BaseException) -> str:
    """The one line for an exception the CLI maps to exit code 2."""
    if isinstance(err, OSError) and err.filename is not None:
        target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        return f"{target}: {err.strerror or type(err).__name__}"
    return _one_line(err) or type(err).__name__


def _library_errors() -> tuple[type[BaseException], ...]:
    """The plain exceptions library code raises for bad input: OSError, ValueError (OtokError, ImageReadError, ...),
    and safetensors' error for a truncated or corrupt weights file (only when safetensors is already loaded)."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError)
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and hasattr(safetensors, "SafetensorError"):
        errors += (safetensors.SafetensorError,)
    return errors


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and temporary-file clean-up runs."""


def _terminated(signum, frame):
    raise Terminated("terminated (SIGTERM)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a one-line argument error
        return int(exit_.code or 0)
    name = " ".join(filter(None, [args.command, getattr(args, "data_command", None), getattr(args, "bench", None)]))
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    shown = warnings.showwarning
    warnings.showwarning = lambda message, category, *_args, **_kw: print(
        f"onetok {name}: warning: {_one_line(message)}", file=sys.stderr)  # one line, not Python's two
    try:
        code = args.func(args)
    except UserError as err:
        print(f"onetok {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        detail = f": {_one_line(err)}" if str(err) else ""
        print(f"onetok {name}: interrupted{detail}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except Exception as err:  # noqa: BLE001 - only the library's plain errors are mapped; the rest is re-raised
        if not isinstance(err, _library_errors()) or os.environ.get("ONETOK_DEBUG"):
            raise
        print(f"onetok {name}: error: {describe(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
