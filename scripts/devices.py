"""Where a command computes: the torch device (`--device`) and the number of CPU threads (`--threads`).

By default a command uses the cores this process may run on (its CPU affinity, `os.sched_getaffinity`: what a
container, `taskset` or a batch scheduler gives it), as torch itself does; no guess from the machine's load. Where
onetok runs steps in parallel (several CPU training processes) each gets an equal share of those cores.
`--threads N` sets the number, and an `OMP_NUM_THREADS` in the environment is left to torch: on cores shared with
other jobs, 1 thread can be much faster than one per core (README, "CPU threads"). The parsers stay torch-free;
torch is imported only when a command applies its choice.
"""

from __future__ import annotations

import argparse
import os
import sys

from onetok.fileio import UserError

THREADS_HELP = ("CPU threads for torch (default: the cores this process may run on, or OMP_NUM_THREADS when set; "
                "on cores shared with other jobs fewer can be faster)")


def choose_device(name: str | None = "auto") -> str:
    """`auto` (or None): cuda when available, else cpu; a named CUDA device must exist."""
    import torch

    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device available")
    return name


def own_cores() -> int:
    """The cores this process may run on (its affinity; the machine's count where there is none), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def share_of_cores(parts: int) -> int:
    """Threads for each of `parts` processes or steps run side by side on this process's cores, at least 1."""
    return max(1, own_cores() // max(1, parts))


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def check_threads(args: argparse.Namespace) -> None:
    """`--threads`, named as the user typed it (before anything loads)."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    if args.threads is not None and args.threads > own_cores():
        print(f"note: --threads {args.threads} is more than the {own_cores()} core(s) this process may run on: "
              "slower, not faster", file=sys.stderr)


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads` when given, else torch's own choice under OMP_NUM_THREADS, else
    `own_cores()`. Returns the number in use."""
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    torch.set_num_threads(threads or own_cores())
    return torch.get_num_threads()
