"""Wall-clock timing of work that may run asynchronously on an accelerator (benchmarks and reports, never models).

One stopwatch and the two ways every benchmark uses it: `median_time` (one call timed `repeats` times after warm-up,
the median reported) and `interleaved` (several calls timed round by round, their order alternating, so that load
drifts on a shared machine hit all of them alike).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

CLOCKS = ("wall", "cpu")  # wall clock, or this process's CPU time (steadier on cores shared with other jobs)


class Stopwatch:
    """`with Stopwatch(device) as watch: ...` then `watch.seconds`: the block's wall clock (or, with clock="cpu",
    this process's CPU time), with the device's queued work finished at both ends (CUDA kernels run asynchronously
    to the host)."""

    def __init__(self, device: torch.device | str = "cpu", clock: str = "wall"):
        if clock not in CLOCKS:
            raise ValueError(f"clock {clock!r}: choose from {', '.join(CLOCKS)}")
        self.device, self.clock, self.seconds = torch.device(device), clock, 0.0

    def _now(self) -> float:
        return time.perf_counter() if self.clock == "wall" else time.process_time()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = self._now() - self._start


class Timing(NamedTuple):
    median_s: float
    seconds: list[float]  # every timed call, in order
    peak_extra_bytes: int | None  # CUDA: the most memory allocated above what was held before the timed calls
    result: Any  # what the last call returned


def median_time(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1,
                clock: str = "wall") -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls (which also pay for compilation and autotuning);
    the previous call's result is released before each call, so that it is not counted in the memory peak."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device)
    result = None
    for _ in range(warmup):
        result = None
        result = fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    seconds = []
    for _ in range(repeats):
        result = None
        with Stopwatch(device, clock) as watch:
            result = fn()
        seconds.append(watch.seconds)
    extra = torch.cuda.max_memory_allocated(device) - base if cuda else None
    return Timing(statistics.median(seconds), seconds, extra, result)


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, device: torch.device | str = "cpu",
                clock: str = "wall") -> dict[str, list[float]]:
    """Seconds of each call in each of `rounds` rounds; every round runs all calls, in the given order on even
    rounds and reversed on odd ones (so no call always goes first or last)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            with Stopwatch(device, clock) as watch:
                fn()
            seconds[name].append(watch.seconds)
    return seconds


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median over rounds of numerator / denominator (robust to a round slowed for both)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))
