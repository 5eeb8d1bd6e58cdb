"""Every Triton kernel compiles ahead of time for an A100 (sm_80) and an H100 (sm_90) without a GPU, on the
installed Triton (`make triton-compat` runs this under Triton 3.6, the GPU image's): this catches what the
interpreter lets through (tl.dot shape limits, layouts, register spills) and checks the tensor-core paths in
the PTX."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

CAPABILITIES = (80, 90)
SCRIPT = Path(__file__).with_name("_compile_kernels.py")
MAX_STACK_BYTES = 16  # per thread; Triton 3.6 puts 8 bytes of one sm_80 bf16 candidate on the stack (3.8: none)


@pytest.fixture(scope="module")
def compiled() -> dict:
    """case name -> report, for both targets (one subprocess each, run side by side)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real, not interpret
    runs = [subprocess.Popen([sys.executable, str(SCRIPT), str(c)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for c in CAPABILITIES]
    cases = {}
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        cases.update(json.loads(out)["cases"])
    return cases


def test_every_kernel_compiles(compiled):
    failed = {name: r["error"] for name, r in compiled.items() if "error" in r}
    assert not failed, failed
    for capability in CAPABILITIES:
        assert any(name.startswith(f"sm_{capability} sjd_verify") for name in compiled)
        assert sum(name.startswith(f"sm_{capability} nearest") for name in compiled) >= 10


def test_nearest_code_runs_on_tensor_cores(compiled):
    """fp32 and cosine searches use TF32 mma (the split-precision dot), fp16/bf16 euclidean their own type; sm_90
    uses Hopper's wgmma."""
    for name, report in compiled.items():
        if " nearest " not in name:
            continue
        operand = "tf32" if ("fp32" in name or "cosine" in name) else name.split()[2].replace("fp", "f")
        instructions = [m for m in report["mma"] if f".{operand}." in m]
        assert instructions, f"{name}: no {operand} tensor-core instruction in {report['mma']}"
        if name.startswith("sm_90"):
            assert all(m.startswith("wgmma") for m in instructions), f"{name}: {report['mma']}"


def test_autotune_candidates_do_not_spill(compiled):
    tuned = {name: r for name, r in compiled.items() if "w/" in name}  # "... 64x64/4w/3s/slots"
    assert len(tuned) >= 2 * 2 * 5
    if not any("stack_bytes" in r for r in tuned.values()):
        pytest.skip("Triton's bundled cuobjdump is missing")
    spilled = {name: r["stack_bytes"] for name, r in tuned.items() if r["stack_bytes"] > MAX_STACK_BYTES}
    assert not spilled, spilled
    sjd = {name: r["stack_bytes"] for name, r in compiled.items() if "sjd_verify" in name}
    assert not any(sjd.values()), sjd
