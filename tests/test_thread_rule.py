"""The thread rule, in fresh processes (torch reads OMP_NUM_THREADS and its affinity once, at start): a command's
default is the number of cores the process may run on (its affinity mask, set with os.sched_setaffinity), as torch's
own default is; OMP_NUM_THREADS in the environment wins over the mask, and `--threads` over both. A CPU training
run divides its cores among its processes (onetok.scripts.devices, onetok.scripts.train.cpu_threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = """
import json, os, sys
from types import SimpleNamespace

masks = json.loads(sys.argv[1])
os.sched_setaffinity(0, masks[0])  # before torch loads
import torch
from lightning.pytorch.accelerators import CPUAccelerator

from onetok.scripts.cli import build_parser
from onetok.scripts.devices import use_threads
from onetok.scripts.train import cpu_threads

found = []
for mask in masks:  # onetok reads the mask whenever it chooses
    os.sched_setaffinity(0, mask)
    out = {"torch at start": torch.get_num_threads()} if not found else {}
    for processes in (1, 2):
        cpu_threads(SimpleNamespace(accelerator=CPUAccelerator(), num_devices=processes))
        out[f"training x{processes}"] = torch.get_num_threads()
    out["command"] = use_threads(None)
    args = build_parser().parse_args(["recode", "in.otok", "-o", "out.otok", "--threads", "2"])
    out["--threads 2"] = use_threads(args.threads)
    found.append(out)
print(json.dumps(found))
"""

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def threads_under(masks: list[list[int]], omp: str | None = None) -> list[dict[str, int]]:
    """What the worker found under each affinity mask in turn (OMP_NUM_THREADS as given, else unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    run = subprocess.run([sys.executable, "-c", WORKER, json.dumps(masks)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.skipif(len(CORES) < 2, reason="needs a process that may run on two cores or more")
def test_the_affinity_mask_sets_the_default_and_threads_wins():
    n = len(CORES)
    one, every = threads_under([CORES[:1], CORES])
    assert one == {"torch at start": 1, "training x1": 1, "training x2": 1, "command": 1, "--threads 2": 2}
    assert every == {"training x1": n, "training x2": n // 2, "command": n, "--threads 2": 2}


@pytest.mark.skipif(len(CORES) < 2, reason="needs a process that may run on two cores or more")
def test_omp_num_threads_wins_over_the_mask_and_threads_over_both():
    (found,) = threads_under([CORES], omp="1")  # torch caps OMP_NUM_THREADS at the cores, so 1 shows the rule
    assert found == {"torch at start": 1, "training x1": 1, "training x2": 1, "command": 1, "--threads 2": 2}
