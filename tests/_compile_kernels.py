"""Compile every Triton kernel ahead of time for NVIDIA targets, without a GPU; print one JSON report.

    python tests/_compile_kernels.py 80 90      # compute capabilities

Run by `tests/test_kernel_compile.py` in a subprocess (TRITON_INTERPRET must be unset before triton loads).
Per case and target: the tensor-core instructions in the PTX (`mma`/`wgmma` with their operand types), and the
registers and stack-frame (spill) bytes that Triton's bundled `cuobjdump` reads from the cubin, or the compile error.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

codebook = importlib.import_module("onetok.kernels.codebook")
sjd = importlib.import_module("onetok.kernels.sjd_triton")

NEAREST_INTS = ["N", "K", "D", "codes_per_split", "n_bucket", "stride_zn", "stride_zd", "stride_cs", "stride_ck",
                "stride_cd"]
SJD_INTS = ["W", "V", "stride_lb", "stride_lw", "stride_lv", "stride_ib", "stride_iw", "stride_qb", "stride_qw",
            "stride_qv", "stride_ab", "stride_aw", "stride_sb"]


def source(fn, pointers: dict[str, str], ints: list[str], constexprs: dict) -> ASTSource:
    """An ASTSource for the installed Triton: name-keyed `constexprs` (>= 3.3) or index-keyed `constants`."""
    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:
        signature = {**pointers, **dict.fromkeys(ints, "i32"), **dict.fromkeys(constexprs, "constexpr")}
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    types = {**pointers, **dict.fromkeys(ints, "i32")}  # Triton 3.1/3.2
    index = {name: i for i, name in enumerate(fn.arg_names)}
    return ASTSource(fn=fn, signature={index[n]: t for n, t in types.items()},
                     constants={index[n]: v for n, v in constexprs.items()})


def nearest_cases() -> dict[str, tuple]:
    """name -> (pointer types, constexprs, num_warps, num_stages) of the nearest-code kernel: each path and config."""
    def case(dtype, cosine=False, block_d=16, one_tile=True, store_score=False, config=codebook._CONFIGS[0]):
        pointers = {"z_ptr": "*" + dtype, "code_ptr": "*" + ("fp32" if dtype == "fp32" or cosine else dtype),
                    "bias_ptr": "*fp32", "score_ptr": "*fp32", "index_ptr": "*i64", "dist_ptr": "*fp32"}
        consts = {"COSINE": cosine, "SPLIT_DOT": dtype == "fp32" or cosine, "STORE_SCORE": store_score,
                  "ONE_D_TILE": one_tile, "BLOCK_D": block_d, **config.kwargs}
        return pointers, consts, config.num_warps, config.num_stages

    chunked = next(c for c in codebook._CONFIGS if c.num_stages == 1)
    cases = {
        "nearest fp32 cosine": case("fp32", cosine=True),
        "nearest bf16 cosine": case("bf16", cosine=True),
        "nearest fp16 euclidean": case("fp16"),
        "nearest fp32 euclidean D=32": case("fp32", block_d=32),
        "nearest fp32 euclidean D-chunks split": case("fp32", block_d=32, one_tile=False, store_score=True, config=chunked),
        "nearest bf16 euclidean D-chunks split": case("bf16", block_d=32, one_tile=False, store_score=True, config=chunked),
    }
    for config in codebook._CONFIGS:  # every autotune candidate, both precisions, on the D path it is tuned for
        kw, chunks = config.kwargs, config.num_stages == 1
        label = (f"{kw['BLOCK_N']}x{kw['BLOCK_K']}/{config.num_warps}w/{config.num_stages}s/"
                 f"{'rows' if kw['ROW_MIN_PER_TILE'] else 'slots'}{' D-chunks' if chunks else ''}")
        for dtype in ("fp32", "bf16"):
            cases[f"nearest {dtype} euclidean {label}"] = case(dtype, config=config, block_d=32 if chunks else 16,
                                                                one_tile=not chunks)
    return cases


def resource_usage(cubin: bytes) -> dict:
    """Registers and stack-frame bytes per thread (where spills go; 0 for these kernels without spills) from
    Triton's bundled cuobjdump."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.is_file():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        run = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                             check=False)
    usage = re.search(r"REG:(\d+) STACK:(\d+)", run.stdout)
    return {"registers": int(usage.group(1)), "stack_bytes": int(usage.group(2))} if usage else {}


def compile_case(fn, pointers, ints, consts, capability: int, num_warps: int = 4, num_stages: int = 3) -> dict:
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    target = GPUTarget("cuda", capability, 32)
    try:
        kernel = triton.compile(source(fn, pointers, ints, consts), target=target,
                                options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as err:  # reported, not raised: the test names the failing case
        return {"error": f"{type(err).__name__}: {str(err)[-600:]}"}
    ptx = kernel.asm["ptx"]
    mma = sorted(set(re.findall(r"\b(w?gmma\.mma_async[\w.]*|mma\.sync[\w.]*)", ptx)))
    return {"mma": mma, **resource_usage(kernel.asm["cubin"])}


def main(capabilities: list[int]) -> dict:
    report = {"triton": triton.__version__, "cases": {}}
    for capability in capabilities:
        for name, spec in nearest_cases().items():
            pointers, consts, *launch = spec
            report["cases"][f"sm_{capability} {name}"] = compile_case(
                codebook._nearest_code_kernel, pointers, NEAREST_INTS, consts, capability, *launch)
        for dtype in ("fp32", "bf16"):
            pointers = {"logits_ptr": "*" + dtype, "draft_ids_ptr": "*i64", "draft_probs_ptr": "*fp32",
                        "u_accept_ptr": "*fp32", "u_sample_ptr": "*fp32", "accept_len_ptr": "*i64",
                        "token_ptr": "*i64"}
            report["cases"][f"sm_{capability} sjd_verify {dtype}"] = compile_case(
                sjd._sjd_verify_kernel, pointers, SJD_INTS, {"BLOCK_V": 1024}, capability)
    return report


if __name__ == "__main__":
    print(json.dumps(main([int(c) for c in sys.argv[1:]] or [80, 90])))
