"""`onetok bench kernels`: the fused nearest-code search and SJD verify against their torch baselines.

Nearest code, per case (N, K, D, dtype, metric): `torch.cdist` + `argmin` (the baseline every ratio is taken
against), `addmm` of the norms + `argmin` (for cosine: `mm` of the normalised rows + `argmax`), the chunked torch
reference (`onetok.kernels.reference`) and, on CUDA, the Triton kernel. For each method: median time, GFMA/s
(N·K·D fused multiply-adds per search), the fraction of the matmul peak measured in the same run for that dtype,
the speed-up over cdist, and the peak extra memory (`torch.cuda.max_memory_allocated` on CUDA; on CPU the size of
the score buffers, marked as an estimate). SJD verify: the torch reference and, on CUDA, the Triton kernel.

Nothing here crashes the run: every case and method records its time or its error (out of memory included).
Without CUDA, Triton cannot run compiled, so the command says so and times the references on a reduced grid.
`onetok bench kernels` calls `kernel_report` and prints `format_tables`; the GPU check (`onetok.bench.gpu_check`)
calls `measure_peaks`, `bench_nearest_code` and `bench_sjd` with cases of its own.
"""

from __future__ import annotations

import datetime
import itertools
import platform

from onetok.bench import defaults

# "reference": onetok's chunked torch search; "default": `onetok.kernels.nearest_code` as the quantizer calls it (the
# torch search or the kernel by size, the prepared codebook cached); "triton": the kernel, always
METHODS = ["cdist+argmin", "addmm+argmin", "reference", "default", "triton"]
DTYPES = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------------------------
# Timing and peaks
# ---------------------------------------------------------------------------------------------------------------


def _timer(device: str, repeats: int):
    """`measure(fn)` -> (median ms over `repeats` after one warm-up, peak extra bytes on CUDA or None, last result)."""
    from onetok.timing import median_time

    def measure(fn) -> tuple[float, int | None, object]:
        timing = median_time(fn, device, repeats=max(1, repeats))
        return 1e3 * timing.median_s, timing.peak_extra_bytes, timing.result

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

    size = defaults.PEAK_MATMUL_SIZE[device]
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


def _nearest_lines(report: dict, methods: list[str]) -> tuple[list[str], list[str]]:
    """The nearest-code table (header, one line per case) and the cases' errors."""
    head = " ".join(f"{_short(m) + ' ms':>13}" for m in methods)
    speed = " ".join(f"{'x ' + _short(m):>11}" for m in methods[1:])
    rate = " ".join(f"{'GFMA/s ' + _short(m):>15} {'%pk':>5}" for m in methods)
    mem = " ".join(f"{'MiB ' + _short(m):>13}" for m in methods)
    extra = f" {'def/addmm':>9}" + (f" {'tri/addmm':>9}" if report["triton"] else "")
    lines = [f"{'N':>7} {'K':>6} {'D':>3} {'dtype':>5} {'metric':>9} {head} {speed}{extra} {rate} {mem}"]
    errors = []
    for row in report["nearest_code"]:
        times = " ".join(f"{_cell(row['ms'].get(m), '.2f'):>13}" for m in methods)
        ratios = " ".join(f"{_cell(row['speedup_vs_cdist'].get(m), '.2f'):>11}" for m in methods[1:])
        rates = " ".join(f"{_cell(row['gfma_s'].get(m), '.1f'):>15} "
                         f"{_cell(_percent(row['peak_fraction'].get(m)), '.0f'):>5}" for m in methods)
        mibs = " ".join(f"{_cell(row['extra_mib'].get(m), '.1f'):>13}" for m in methods)
        extra = f" {_cell(row.get('default_vs_addmm'), '.2f'):>9}"
        extra += f" {_cell(row['triton_vs_addmm'], '.2f'):>9}" if report["triton"] else ""
        lines.append(f"{row['N']:>7} {row['K']:>6} {row['D']:>3} {row['dtype']:>5} {row['metric']:>9} {times} "
                     f"{ratios}{extra} {rates} {mibs}")
        errors += [f"  N={row['N']} K={row['K']} D={row['D']} {row['dtype']} {row['metric']} {m}: {e}"
                   for m, e in row["errors"].items()]
    return lines, errors


def format_tables(report: dict) -> str:
    """`kernel_report`'s result as text tables."""
    methods = [m for m in METHODS if report["triton"] or m != "triton"]
    peaks = ", ".join(f"{k} {_cell(v.get('gfma_s'), '.0f')} GFMA/s" if "gfma_s" in v else f"{k} {v['error']}"
                      for k, v in report["matmul_peak"].items())
    lines = [f"# onetok bench kernels — {report['date']} — {report['device']}",
             f"# triton: {report['triton_status']}", f"# memory: {report['memory_note']}",
             f"# matmul peak (square {report['peak_size']}): {peaks}", ""]
    table, errors = _nearest_lines(report, methods)
    lines += table
    lines.append("\n(x name = cdist+argmin time / that method's time in the same run"
                 "; def/addmm = addmm+argmin time / the default path's (onetok.kernels.nearest_code) time"
                 + ("; tri/addmm = addmm+argmin time / triton time" if report["triton"] else "")
                 + "; %pk = percent of the measured matmul peak of that dtype; cosine baselines: cdist of normalised "
                   "rows, mm+argmax)\n")
    lines.append(f"{'B':>3} {'W':>3} {'V':>6} {'reference ms':>13} {'triton ms':>10} {'speed-up':>9}")
    for row in report["sjd_verify"]:
        lines.append(f"{row['B']:>3} {row['W']:>3} {row['V']:>6} {_cell(row['ms'].get('reference'), '.2f'):>13} "
                     f"{_cell(row['ms'].get('triton'), '.2f'):>10} {_cell(row.get('speedup'), '.2f'):>9}")
        errors += [f"  SJD B={row['B']} W={row['W']} V={row['V']} {m}: {e}" for m, e in row["errors"].items()]
    if errors:
        lines.append("\nnot measured:\n" + "\n".join(errors))
    return "\n".join(lines)


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


def parse_names(text: str | None, allowed, default: str, what: str) -> list[str]:
    """A comma-separated list of `allowed` names (`default` when None); ValueError naming `what` otherwise."""
    names = [n.strip() for n in (text or default).split(",") if n.strip()]
    if not names or not set(names) <= set(allowed):
        raise ValueError(f"{what} takes {', '.join(allowed)}; got {text!r}")
    return names


def kernel_report(quick: bool = False, repeats: int | None = None, dtypes: str | None = None,
                  metrics: str | None = None, seed: int = 0) -> dict:
    """Every nearest-code case of the grid for this device and every SJD verify case, timed against their torch
    baselines (see the module docstring); dtypes / metrics as comma-separated names, None for the defaults."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtypes = parse_names(dtypes, DTYPES, defaults.KERNEL_DTYPES[device], "--dtypes")
    metrics = parse_names(metrics, ("euclidean", "cosine"), defaults.KERNEL_METRICS, "--metrics")
    use_triton, status = triton_status(cuda)
    repeats = repeats or defaults.KERNEL_REPEATS[device]
    grid = defaults.KERNEL_CPU_GRID if not cuda else (defaults.KERNEL_QUICK_GPU_GRID if quick else defaults.KERNEL_FULL_GRID)
    sjd_cases = defaults.SJD_VERIFY_CPU if not cuda else defaults.SJD_VERIFY_FULL[: 2 if quick else None]
    name = torch.cuda.get_device_name() if cuda else f"CPU {platform.processor() or platform.machine()}"
    peaks = measure_peaks(device, dtypes)
    return {
        "date": datetime.date.today().isoformat(),
        "device": f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "triton": use_triton,
        "triton_status": status,
        "memory_note": "torch.cuda.max_memory_allocated above the inputs" if cuda else "estimated score-buffer size",
        "matmul_peak": peaks,
        "peak_size": defaults.PEAK_MATMUL_SIZE[device],
        "nearest_code": bench_nearest_code(nearest_code_cases(grid, dtypes, metrics), device, use_triton, repeats,
                                           seed, peaks),
        "sjd_verify": bench_sjd(sjd_cases, device, use_triton, repeats, seed),
    }
