"""`onetok bench kernels`: the fused nearest-code search and SJD verify against their torch baselines.

Nearest code, per case (N, K, D, dtype, metric): `torch.cdist` + `argmin` (the baseline every ratio is taken
against), `addmm` of the norms + `argmin` (for cosine: `mm` of the normalised rows + `argmax`), the chunked torch
reference (`onetok.kernels.reference`) and, on CUDA, the Triton kernel. For each method: median time, GFMA/s
(N·K·D fused multiply-adds per search), the fraction of the matmul peak measured in the same run for that dtype,
the speed-up over cdist, and the peak extra memory (`torch.cuda.max_memory_allocated` on CUDA; on CPU the size of
the score buffers, marked as an estimate). SJD verify: the torch reference and, on CUDA, the Triton kernel.

Nothing here crashes the run: every case and method records its time or its error (out of memory included).
Without CUDA, Triton cannot run compiled, so the command says so and times the references on a reduced grid.
Wired into the CLI by `cmd_bench.py` through `add_arguments(parser)` and `run(args)`; `scripts/gpu_check.py`
calls `measure_peaks`, `bench_nearest_code` and `bench_sjd` with cases of its own.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import statistics
import time

FULL_GRID = {"N": [4096, 65536, 262144], "K": [1024, 4096, 16384, 65536], "D": [8, 12, 16, 32, 64]}
QUICK_GPU_GRID = {"N": [65536], "K": [4096, 16384], "D": [8, 16, 64]}
CPU_GRID = {"N": [4096, 16384], "K": [1024, 4096], "D": [16]}
SJD_FULL = [(1, 16, 32768), (8, 16, 32768), (8, 32, 32768), (32, 16, 32768)]  # (B, W, V)
SJD_CPU = [(1, 16, 4096), (8, 16, 4096), (8, 16, 32768)]
# "reference": onetok's chunked torch search; "default": `onetok.kernels.nearest_code` as the quantizer calls it (the
# torch search or the kernel by size, the prepared codebook cached); "triton": the kernel, always
METHODS = ["cdist+argmin", "addmm+argmin", "reference", "default", "triton"]
DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a reduced grid (always the case without CUDA)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 10 GPU, 3 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dtypes", default=None, help="comma-separated input dtypes of fp32, bf16, fp16 "
                        "(default: fp32 on CPU, fp32,bf16 on CUDA)")
    parser.add_argument("--metrics", default="euclidean", help="comma-separated: euclidean, cosine (default euclidean)")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------------------------------------------------------
# Timing and peaks
# ---------------------------------------------------------------------------------------------------------------


def _timer(device: str, repeats: int):
    """A function timing `fn()`: (median ms over `repeats` after one warm-up, peak extra bytes or None, last result).
    The warm-up call also pays for Triton's compilation and autotuning."""
    import torch

    repeats = max(1, repeats)

    def measure(fn) -> tuple[float, int | None, object]:
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            del result
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                result = fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                result = fn()
                times.append((time.perf_counter() - t0) * 1e3)
        extra = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
        return statistics.median(times), extra, result

    return measure


def _error(err: BaseException) -> str:
    """A one-line description of a failed measurement; frees the CUDA cache after an out-of-memory error."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return "out of memory"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def measure_peaks(device: str, dtypes: list[str], repeats: int = 5) -> dict:
    """Square-matmul rate per input dtype in GFMA/s (one multiply-add = 2 FLOP), timed like everything else here;
    fp32 as torch runs it by default (on CUDA: no TF32). Errors are recorded, not raised."""
    import torch

    size = 8192 if device == "cuda" else 1024
    measure, peaks = _timer(device, repeats), {}
    for name in dtypes:
        if device == "cpu" and name != "fp32":
            continue  # low-precision CPU matmuls are no reference point
        try:
            a = torch.randn(size, size, device=device).to(_torch_dtype(name))
            b = torch.randn(size, size, device=device).to(_torch_dtype(name))
            ms, _, _ = measure(lambda a=a, b=b: a @ b)
            peaks[name] = {"gfma_s": size**3 / ms / 1e6, "size": size, "ms": ms}
            del a, b
        except Exception as err:  # a benchmark records what failed and goes on
            peaks[name] = {"error": _error(err)}
    return peaks


# ---------------------------------------------------------------------------------------------------------------
# Nearest code
# ---------------------------------------------------------------------------------------------------------------


def _nearest_code_methods(z, codebook, metric: str, use_triton: bool) -> dict:
    """name -> zero-argument callable returning the indices (N,)."""
    import torch
    import torch.nn.functional as F

    from onetok import kernels

    def cdist_argmin():
        if metric == "cosine":
            return torch.cdist(F.normalize(z, dim=1), F.normalize(codebook, dim=1)).argmin(dim=1)
        return torch.cdist(z, codebook).argmin(dim=1)

    def addmm_argmin():
        if metric == "cosine":
            return torch.mm(F.normalize(z, dim=1), F.normalize(codebook, dim=1).t()).argmax(dim=1)
        code_sq = (codebook * codebook).sum(dim=1)
        return torch.addmm(code_sq, z, codebook.t(), alpha=-2.0).argmin(dim=1)

    methods = {
        "cdist+argmin": cdist_argmin,
        "addmm+argmin": addmm_argmin,
        "reference": lambda: kernels.nearest_code(z, codebook, metric, backend="torch").indices,
        "default": lambda: kernels.nearest_code(z, codebook, metric).indices,
    }
    if use_triton:
        methods["triton"] = lambda: kernels.nearest_code(z, codebook, metric, backend="triton").indices
    return methods


def _estimated_extra_bytes(method: str, n: int, k: int) -> int:
    """CPU: bytes of the score buffers each method allocates (what max_memory_allocated measures on CUDA)."""
    from onetok.kernels import reference

    if method in ("cdist+argmin", "addmm+argmin"):
        return n * k * 4
    if method in ("reference", "default"):  # on CPU the default path is the torch search
        return min(n, reference.chunk_rows(k)) * k * 4 + n * 12
    return n * 12


def nearest_code_cases(grid: dict, dtypes: list[str], metrics: list[str]) -> list[dict]:
    return [{"N": n, "K": k, "D": d, "dtype": dt, "metric": m}
            for dt, m, n, k, d in itertools.product(dtypes, metrics, grid["N"], grid["K"], grid["D"])]


def _bench_case(case: dict, device: str, use_triton: bool, measure, seed: int, peaks: dict) -> dict:
    import torch

    from onetok import kernels

    n, k, d = case["N"], case["K"], case["D"]
    row = {**case, "ms": {}, "extra_mib": {}, "gfma_s": {}, "peak_fraction": {}, "errors": {}}
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, d, device=device, generator=g).to(_torch_dtype(case["dtype"]))
    codebook = torch.randn(k, d, device=device, generator=g).to(_torch_dtype(case["dtype"]))
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
    results = {}
    for name, fn in _nearest_code_methods(z, codebook, case["metric"], use_triton).items():
        if free is not None and name.endswith("argmin") and n * k * 4 * 2 > free:
            row["errors"][name] = "skipped: the N x K scores do not fit in free GPU memory"
            continue
        try:
            ms, extra, results[name] = measure(fn)
        except Exception as err:  # recorded per method; the next one runs
            row["errors"][name] = _error(err)
            continue
        extra = _estimated_extra_bytes(name, n, k) if extra is None else extra
        row["ms"][name], row["extra_mib"][name] = ms, extra / 2**20
        row["gfma_s"][name] = n * k * d / ms / 1e6
        peak = peaks.get(case["dtype"], {}).get("gfma_s")
        row["peak_fraction"][name] = row["gfma_s"][name] / peak if peak else None
    base = row["ms"].get("cdist+argmin")
    row["speedup_vs_cdist"] = {m: base / t for m, t in row["ms"].items()} if base else {}
    for method in ("triton", "default"):
        row[f"{method}_vs_addmm"] = (row["ms"]["addmm+argmin"] / row["ms"][method]
                                     if method in row["ms"] and "addmm+argmin" in row["ms"] else None)
    row["default_path"] = kernels.search_backend("auto", z, k)
    if "triton" in results and "reference" in results:  # same argmin as the reference (near-ties may differ)
        row["triton_agreement"] = (results["triton"] == results["reference"]).float().mean().item()
    return row


def bench_nearest_code(cases: list[dict], device: str, use_triton: bool, repeats: int, seed: int,
                       peaks: dict | None = None) -> list[dict]:
    """One row per case; a case that cannot even be set up (e.g. inputs out of memory) records that error."""
    measure, rows = _timer(device, repeats), []
    for case in cases:
        try:
            rows.append(_bench_case(case, device, use_triton, measure, seed, peaks or {}))
        except Exception as err:
            rows.append({**case, "ms": {}, "extra_mib": {}, "gfma_s": {}, "peak_fraction": {},
                         "speedup_vs_cdist": {}, "triton_vs_addmm": None, "default_vs_addmm": None,
                         "errors": {"case": _error(err)}})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# SJD verify
# ---------------------------------------------------------------------------------------------------------------


def bench_sjd(cases: list, device: str, use_triton: bool, repeats: int, seed: int) -> list[dict]:
    import torch

    from onetok import kernels

    measure = _timer(device, repeats)
    rows = []
    for b, w, v in cases:
        row = {"B": b, "W": w, "V": v, "ms": {}, "errors": {}}
        try:
            g = torch.Generator(device=device).manual_seed(seed)
            logits = torch.randn(b, w + 1, v, device=device, generator=g) * 3
            q = torch.softmax(torch.randn(b, w, v, device=device, generator=g) * 3, dim=-1)
            draft_ids = torch.multinomial(q.reshape(-1, v), 1, generator=g).reshape(b, w)
            args = (logits, draft_ids, q, torch.rand(b, w, device=device, generator=g),
                    torch.rand(b, device=device, generator=g))
        except Exception as err:
            row["errors"]["case"] = _error(err)
            rows.append(row)
            continue
        for name in ("reference", "triton") if use_triton else ("reference",):
            backend = "torch" if name == "reference" else "triton"
            try:
                row["ms"][name], _, _ = measure(lambda args=args, backend=backend: kernels.sjd_verify(*args, backend))
            except Exception as err:
                row["errors"][name] = _error(err)
        if "triton" in row["ms"] and "reference" in row["ms"]:
            row["speedup"] = row["ms"]["reference"] / row["ms"]["triton"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _short(method: str) -> str:
    return method.split("+")[0]


def print_tables(report: dict) -> None:
    methods = [m for m in METHODS if report["triton"] or m != "triton"]
    print(f"# onetok bench kernels — {report['date']} — {report['device']}")
    print(f"# triton: {report['triton_status']}")
    print(f"# memory: {report['memory_note']}")
    peaks = ", ".join(f"{k} {_cell(v.get('gfma_s'), '.0f')} GFMA/s" if "gfma_s" in v else f"{k} {v['error']}"
                      for k, v in report["matmul_peak"].items())
    print(f"# matmul peak (square {report['peak_size']}): {peaks}\n")
    head = " ".join(f"{_short(m) + ' ms':>13}" for m in methods)
    speed = " ".join(f"{'x ' + _short(m):>11}" for m in methods[1:])
    rate = " ".join(f"{'GFMA/s ' + _short(m):>15} {'%pk':>5}" for m in methods)
    mem = " ".join(f"{'MiB ' + _short(m):>13}" for m in methods)
    extra = f" {'def/addmm':>9}" + (f" {'tri/addmm':>9}" if report["triton"] else "")
    print(f"{'N':>7} {'K':>6} {'D':>3} {'dtype':>5} {'metric':>9} {head} {speed}{extra} {rate} {mem}")
    errors = []
    for row in report["nearest_code"]:
        times = " ".join(f"{_cell(row['ms'].get(m), '.2f'):>13}" for m in methods)
        ratios = " ".join(f"{_cell(row['speedup_vs_cdist'].get(m), '.2f'):>11}" for m in methods[1:])
        rates = " ".join(f"{_cell(row['gfma_s'].get(m), '.1f'):>15} "
                         f"{_cell(_percent(row['peak_fraction'].get(m)), '.0f'):>5}" for m in methods)
        mibs = " ".join(f"{_cell(row['extra_mib'].get(m), '.1f'):>13}" for m in methods)
        extra = f" {_cell(row.get('default_vs_addmm'), '.2f'):>9}"
        extra += f" {_cell(row['triton_vs_addmm'], '.2f'):>9}" if report["triton"] else ""
        print(f"{row['N']:>7} {row['K']:>6} {row['D']:>3} {row['dtype']:>5} {row['metric']:>9} {times} {ratios}"
              f"{extra} {rates} {mibs}")
        errors += [f"  N={row['N']} K={row['K']} D={row['D']} {row['dtype']} {row['metric']} {m}: {e}"
                   for m, e in row["errors"].items()]
    print("\n(x name = cdist+argmin time / that method's time in the same run", end="")
    print("; def/addmm = addmm+argmin time / the default path's (onetok.kernels.nearest_code) time", end="")
    print("; tri/addmm = addmm+argmin time / triton time" if report["triton"] else "", end="")
    print("; %pk = percent of the measured matmul peak of that dtype; cosine baselines: cdist of normalised rows, "
          "mm+argmax)\n")
    print(f"{'B':>3} {'W':>3} {'V':>6} {'reference ms':>13} {'triton ms':>10} {'speed-up':>9}")
    for row in report["sjd_verify"]:
        print(f"{row['B']:>3} {row['W']:>3} {row['V']:>6} {_cell(row['ms'].get('reference'), '.2f'):>13} "
              f"{_cell(row['ms'].get('triton'), '.2f'):>10} {_cell(row.get('speedup'), '.2f'):>9}")
        errors += [f"  SJD B={row['B']} W={row['W']} V={row['V']} {m}: {e}" for m, e in row["errors"].items()]
    if errors:
        print("\nnot measured:\n" + "\n".join(errors))


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def triton_status(cuda: bool) -> tuple[bool, str]:
    """(use triton, one line saying why or why not)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "unavailable (triton is not installed): timing the torch references only"
    if not cuda:
        return False, "unavailable (no CUDA device): timing the torch references only"
    return True, "available"


def run(args: argparse.Namespace) -> int:
    import torch

    from onetok.fileio import UserError

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    use_triton, status = triton_status(cuda)
    device = "cuda" if cuda else "cpu"
    repeats = args.repeats or (10 if cuda else 3)
    dtypes = [d.strip() for d in (args.dtypes or ("fp32,bf16" if cuda else "fp32")).split(",") if d.strip()]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not set(dtypes) <= set(DTYPES) or not set(metrics) <= {"euclidean", "cosine"} or not dtypes or not metrics:
        raise UserError(f"--dtypes takes {', '.join(DTYPES)}; --metrics takes euclidean, cosine")
    grid = CPU_GRID if not cuda else (QUICK_GPU_GRID if args.quick else FULL_GRID)
    sjd_cases = SJD_CPU if not cuda else (SJD_FULL[:2] if args.quick else SJD_FULL)
    name = torch.cuda.get_device_name() if cuda else f"CPU {platform.processor() or platform.machine()}"
    peaks = measure_peaks(device, dtypes)
    report = {
        "date": datetime.date.today().isoformat(),
        "device": f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "triton": use_triton,
        "triton_status": status,
        "memory_note": "torch.cuda.max_memory_allocated above the inputs" if cuda else "estimated score-buffer size",
        "matmul_peak": peaks,
        "peak_size": 8192 if cuda else 1024,
        "nearest_code": bench_nearest_code(nearest_code_cases(grid, dtypes, metrics), device, use_triton, repeats,
                                           args.seed, peaks),
        "sjd_verify": bench_sjd(sjd_cases, device, use_triton, repeats, args.seed),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_tables(report)
    return 0
