"""`onetok bench kernels`: the fused nearest-code search and SJD verify against their torch baselines.

Nearest code: `torch.cdist` + `argmin` (the baseline every ratio is taken against), `addmm` of the norms +
`argmin`, the chunked torch reference (`onetok.kernels.reference`) and, on CUDA, the Triton kernel. For each
method: median time, speed-up over cdist and the peak extra memory (measured with
`torch.cuda.max_memory_allocated` on CUDA; on CPU the size of the score buffers, marked as an estimate).
SJD verify: the torch reference and, on CUDA, the Triton kernel.

Without CUDA, Triton cannot run compiled, so the command says so and times the references on a reduced grid.
Wired into the CLI by `cmd_bench.py` through `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

FULL_GRID = {"N": [4096, 65536, 262144], "K": [1024, 4096, 16384, 65536], "D": [8, 12, 16, 32, 64]}
QUICK_GPU_GRID = {"N": [65536], "K": [4096, 16384], "D": [8, 16, 64]}
CPU_GRID = {"N": [4096, 16384], "K": [1024, 4096], "D": [16]}
SJD_FULL = [(1, 16, 32768), (8, 16, 32768), (8, 32, 32768), (32, 16, 32768)]  # (B, W, V)
SJD_CPU = [(1, 16, 4096), (8, 16, 4096), (8, 16, 32768)]
METHODS = ["cdist+argmin", "addmm+argmin", "reference", "triton"]  # "reference": onetok's chunked torch path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a reduced grid (always the case without CUDA)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 10 GPU, 3 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)


def _timer(device: str, repeats: int):
    """A function timing `fn()` (median ms over `repeats` after one warm-up) and its peak extra memory (bytes)."""
    import torch

    def measure(fn) -> tuple[float, int | None]:
        fn()  # warm-up (and Triton compilation)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        extra = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
        return statistics.median(times), extra

    return measure


def _nearest_code_methods(z, codebook, use_triton: bool) -> dict:
    """name -> zero-argument callable computing the indices."""
    import torch

    from onetok import kernels

    def cdist_argmin():
        return torch.cdist(z, codebook).argmin(dim=1)

    def addmm_argmin():
        code_sq = (codebook * codebook).sum(dim=1)
        return torch.addmm(code_sq, z, codebook.t(), alpha=-2.0).argmin(dim=1)

    methods = {
        "cdist+argmin": cdist_argmin,
        "addmm+argmin": addmm_argmin,
        "reference": lambda: kernels.nearest_code(z, codebook, backend="torch"),
    }
    if use_triton:
        methods["triton"] = lambda: kernels.nearest_code(z, codebook, backend="triton")
    return methods


def _estimated_extra_bytes(method: str, n: int, k: int) -> int:
    """CPU: bytes of the score buffers each method allocates (what max_memory_allocated measures on CUDA)."""
    from onetok.kernels import reference

    if method in ("cdist+argmin", "addmm+argmin"):
        return n * k * 4
    if method == "reference":
        return min(n, reference.chunk_rows(k)) * k * 4 + n * 12
    return n * 12


def bench_nearest_code(grid: dict, device: str, use_triton: bool, repeats: int, seed: int) -> list[dict]:
    import torch

    measure = _timer(device, repeats)
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
    rows = []
    for n in grid["N"]:
        for k in grid["K"]:
            for d in grid["D"]:
                g = torch.Generator(device=device).manual_seed(seed)
                z = torch.randn(n, d, device=device, generator=g)
                codebook = torch.randn(k, d, device=device, generator=g)
                row = {"N": n, "K": k, "D": d, "ms": {}, "extra_mib": {}}
                for name, fn in _nearest_code_methods(z, codebook, use_triton).items():
                    if free is not None and name.endswith("argmin") and n * k * 4 * 2 > free:
                        continue  # the N×K matrix does not fit: left blank in the table
                    try:
                        ms, extra = measure(fn)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        continue
                    extra = _estimated_extra_bytes(name, n, k) if extra is None else extra
                    row["ms"][name], row["extra_mib"][name] = ms, extra / 2**20
                base = row["ms"].get("cdist+argmin")
                row["speedup_vs_cdist"] = {m: base / t for m, t in row["ms"].items()} if base else {}
                row["triton_vs_addmm"] = (
                    row["ms"]["addmm+argmin"] / row["ms"]["triton"]
                    if "triton" in row["ms"] and "addmm+argmin" in row["ms"]
                    else None
                )
                rows.append(row)
                del z, codebook
    return rows


def bench_sjd(cases: list, device: str, use_triton: bool, repeats: int, seed: int) -> list[dict]:
    import torch

    from onetok import kernels

    measure = _timer(device, repeats)
    rows = []
    for b, w, v in cases:
        g = torch.Generator(device=device).manual_seed(seed)
        logits = torch.randn(b, w + 1, v, device=device, generator=g) * 3
        q = torch.softmax(torch.randn(b, w, v, device=device, generator=g) * 3, dim=-1)
        draft_ids = torch.multinomial(q.reshape(-1, v), 1, generator=g).reshape(b, w)
        u_accept = torch.rand(b, w, device=device, generator=g)
        u_sample = torch.rand(b, device=device, generator=g)
        args = (logits, draft_ids, q, u_accept, u_sample)
        row = {"B": b, "W": w, "V": v, "ms": {}}
        row["ms"]["reference"], _ = measure(lambda args=args: kernels.sjd_verify(*args, backend="torch"))
        if use_triton:
            row["ms"]["triton"], _ = measure(lambda args=args: kernels.sjd_verify(*args, backend="triton"))
            row["speedup"] = row["ms"]["reference"] / row["ms"]["triton"]
        rows.append(row)
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_tables(report: dict) -> None:
    methods = [m for m in METHODS if report["triton"] or m != "triton"]
    print(f"# onetok bench kernels — {report['date']} — {report['device']}")
    print(f"# triton: {report['triton_status']}")
    print(f"# memory: {report['memory_note']}\n")
    head = " ".join(f"{m.split('+')[0] + ' ms':>13}" for m in methods)
    speed = " ".join(f"{'x ' + m.split('+')[0]:>11}" for m in methods[1:])
    mem = " ".join(f"{'MiB ' + m.split('+')[0]:>13}" for m in methods)
    extra = f" {'tri/addmm':>9}" if report["triton"] else ""
    print(f"{'N':>7} {'K':>6} {'D':>3} {head} {speed}{extra} {mem}")
    for row in report["nearest_code"]:
        times = " ".join(f"{_cell(row['ms'].get(m), '.2f'):>13}" for m in methods)
        ratios = " ".join(f"{_cell(row['speedup_vs_cdist'].get(m), '.2f'):>11}" for m in methods[1:])
        mibs = " ".join(f"{_cell(row['extra_mib'].get(m), '.1f'):>13}" for m in methods)
        extra = f" {_cell(row['triton_vs_addmm'], '.2f'):>9}" if report["triton"] else ""
        print(f"{row['N']:>7} {row['K']:>6} {row['D']:>3} {times} {ratios}{extra} {mibs}")
    print("\n(x name = cdist+argmin time / that method's time in the same run", end="")
    print("; tri/addmm = addmm+argmin time / triton time)\n" if report["triton"] else ")\n")
    print(f"{'B':>3} {'W':>3} {'V':>6} {'reference ms':>13} {'triton ms':>10} {'speed-up':>9}")
    for row in report["sjd_verify"]:
        print(
            f"{row['B']:>3} {row['W']:>3} {row['V']:>6} {row['ms']['reference']:>13.2f} "
            f"{_cell(row['ms'].get('triton'), '.2f'):>10} {_cell(row.get('speedup'), '.2f'):>9}"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    try:
        import triton  # noqa: F401

        triton_status = "available" if cuda else "unavailable (no CUDA device): timing the torch references only"
    except ImportError:
        triton_status = "unavailable (triton is not installed): timing the torch references only"
    use_triton = cuda and triton_status == "available"
    device = "cuda" if cuda else "cpu"
    repeats = args.repeats or (10 if cuda else 3)
    grid = CPU_GRID if not cuda else (QUICK_GPU_GRID if args.quick else FULL_GRID)
    sjd_cases = SJD_CPU if not cuda else (SJD_FULL[:2] if args.quick else SJD_FULL)
    name = torch.cuda.get_device_name() if cuda else f"CPU {platform.processor() or platform.machine()}"
    report = {
        "date": datetime.date.today().isoformat(),
        "device": f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "triton": use_triton,
        "triton_status": triton_status,
        "memory_note": "torch.cuda.max_memory_allocated above the inputs" if cuda else "estimated score-buffer size",
        "nearest_code": bench_nearest_code(grid, device, use_triton, repeats, args.seed),
        "sjd_verify": bench_sjd(sjd_cases, device, use_triton, repeats, args.seed),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_tables(report)
    return 0
