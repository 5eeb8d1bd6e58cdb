"""Wall-clock timing of work that may run asynchronously on an accelerator (benchmarks and reports, never models)."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """`with Stopwatch(device) as watch: ...` then `watch.seconds`: the block's wall clock, with the device's queued
    work finished at both ends (CUDA kernels run asynchronously to the host)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device, self.seconds = torch.device(device), 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start
