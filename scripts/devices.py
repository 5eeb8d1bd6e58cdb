"""Where a command computes: the torch device (`--device`) and the number of CPU threads (`--threads`).

torch starts one thread per core. On cores that other processes are busy with, that thrashes: on 2 cores shared
with one other job, a CPU training step ran about 4x faster with 1 thread than with 2 (1.4 vs 6 steps/s). So by
default a command takes the cores that are not busy: those this process may run on (its CPU affinity) less the
threads other processes have runnable right now (`/proc/loadavg`, a median of a few reads; the 1-minute load
average lags, so a pipeline's own previous step would count), at least 1. `--threads N` sets the number; an
`OMP_NUM_THREADS` in the environment is left to torch. The parsers stay torch-free; torch is imported only when a
command applies its choice.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from onetok.fileio import UserError

THREADS_HELP = ("CPU threads for torch (default: the cores not busy -- this process's cores less other processes' "
                "runnable threads, at least 1 -- or OMP_NUM_THREADS when set)")
LOADAVG = "/proc/loadavg"


def choose_device(name: str | None = "auto") -> str:
    """`auto` (or None): cuda when available, else cpu; a named CUDA device must exist."""
    import torch

    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device available")
    return name


def busy_cores(samples: int = 5) -> float:
    """Threads of other processes that are runnable now: the median over a few reads of /proc/loadavg's running
    count, less this process; the 1-minute load average where there is no /proc."""
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(0.01)
            with open(LOADAVG) as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)  # "R/T": runnable/total, R counts us
        return float(statistics.median(counts))
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return 0.0


def idle_cores() -> int:
    """The cores this process may run on (its affinity) that other processes leave free, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cores - round(busy_cores())))


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def check_threads(args: argparse.Namespace) -> None:
    """`--threads`, named as the user typed it (before anything loads)."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: `threads` when given, else torch's own choice under OMP_NUM_THREADS, else
    `idle_cores()`. Returns the number in use."""
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    torch.set_num_threads(threads or idle_cores())
    return torch.get_num_threads()
