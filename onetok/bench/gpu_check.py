"""The prepared GPU check: one H100/H200, at most 8 minutes, from a checkout; one JSON and one markdown file.

    make gpu-check OUT=DIR [DRY=1] [MODEL=DIR]          (scripts/gpu_check.sh: installs the checkout, then runs
    python -m onetok.scripts.gpu_check --out DIR ...     this check through its command line)

Sections, in order of value (each records its numbers, its error, or why it was skipped; the report is rewritten
after every section, so a run cut short keeps what it measured):

    environment      device, driver, versions, which optional packages import, where onetok was imported from
    peaks            device-to-device copy bandwidth; fp32 / TF32 / bf16 square-matmul rates
    nearest_code     N=65536 K=16384 D=16 (fp32, bf16 x euclidean, cosine) and the TiTok-S-128 quantizer's shapes
                     (N = 128 ... 32768), the default path (`onetok.kernels.nearest_code`) vs the Triton kernel vs
                     cdist+argmin vs addmm+argmin vs the torch reference, with peak extra memory
    sjd_verify       the verify kernel vs its torch reference
    tokenizer_reference  titok-s-128 vs bytedance/1d-tokenizer's TiTok (third_party/1d-tokenizer of the checkout,
                     or --reference): training steps/s and encode/decode images/s, bf16, interleaved (gpu_side.py)
    natural_model    the built-in natural-image unified model (--natural-model DIR): training steps/s, sampling
                     images/s at batch 1, 16, 256, plain vs SJD
    otok_cuda        a .otok file written on the CPU (portable coder) decoded on CUDA, and one written on CUDA
                     decoded on the CPU: the same ids?
    tests            the checkout's kernel tests, compiled on the device, and every `gpu`-marked test (pytest
                     subprocess)
    sampling_random  plain vs SJD x batch 1 and 16: random-weight AR `base`, 256-token tokenizer
    tokenizer_speed  titok-s-128 encode/decode images/s in bf16 and fp32, time per stage
    train_rates      bf16-mixed training steps/s of the TiTok-S-128 tokenizer and the AR `base` configs
    sampling_trained plain vs SJD on a trained model: --model DIR, else the `shapes` AR model trained here briefly

`--dry-run` runs everything on CPU at toy sizes, skipping what needs CUDA (and saying so). `onetok` is imported as
installed (scripts/gpu_check.sh installs the checkout first); the checkout itself is read only for its tests and
its git-ignored third_party/ folder. A watchdog writes the report and exits (code 3) at the deadline whatever is
running.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from onetok.bench.defaults import GPU_CHECK_DEADLINE_S

OPTIONAL_PACKAGES = ("lightning", "timm", "einops", "yaml", "pytest", "xdist", "webdataset", "vector_quantize_pytorch",
                     "jsonargparse", "constriction", "sentencepiece")


# ---------------------------------------------------------------------------------------------------------------
# Sections and their runner
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    out: Path
    scratch: Path
    dry_run: bool
    device: str
    deadline: float  # time.monotonic() value
    checkout: Path = Path(".")  # the checkout: its tests/ and third_party/ (onetok itself is imported as installed)
    model_dir: str | None = None
    shared: dict = field(default_factory=dict)  # results later sections reuse (e.g. the matmul peaks)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


@dataclass
class Section:
    name: str
    run: object  # callable(Context) -> dict
    needs_s: float  # time it needs on a GPU (skipped when less is left)
    needs_s_dry: float
    requires: tuple[str, ...] = ()  # modules that must import
    cuda_only: bool = False


def _skip(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def run_section(section: Section, ctx: Context) -> dict:
    """Run one section: its result, or why it was skipped, or its error (never raises)."""
    if section.cuda_only and ctx.device != "cuda":
        return _skip("needs CUDA (dry run on CPU)" if ctx.dry_run else "needs CUDA")
    missing = [m for m in section.requires if importlib.util.find_spec(m) is None]
    if missing:
        return _skip(f"missing package(s): {', '.join(missing)} (bring wheels: see scripts/gpu_check.sh)")
    needs = section.needs_s_dry if ctx.dry_run else section.needs_s
    if ctx.left() < needs:
        return _skip(f"deadline: needs ~{needs:.0f} s, {ctx.left():.0f} s left")
    start = time.monotonic()
    try:
        value = section.run(ctx)
        result = _skip(value["skip_reason"]) if "skip_reason" in value else {"status": "ok", "result": value}
    except Exception as err:  # a section's failure is a finding, not the end of the check
        result = {"status": "error", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


# ---------------------------------------------------------------------------------------------------------------
# environment, peaks, kernels
# ---------------------------------------------------------------------------------------------------------------


def _version(module: str, distributions: dict) -> str | None:
    """The installed version of the distribution providing `module` (None: not importable), without importing it."""
    if importlib.util.find_spec(module) is None:
        return None
    dists = distributions.get(module, [])
    try:
        return importlib.metadata.version(dists[0]) if dists else "present"
    except importlib.metadata.PackageNotFoundError:
        return "present"


def environment(ctx: Context) -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_count": os.cpu_count(), "onetok": str(Path(importlib.import_module("onetok").__file__).parent)}
    dists = importlib.metadata.packages_distributions()
    info["packages"] = {name: _version(name, dists) for name in ("triton", "numpy", *OPTIONAL_PACKAGES)}
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "multiprocessors": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
    else:
        info["device"] = {"name": f"CPU {platform.processor() or platform.machine()}",
                          "torch_threads": torch.get_num_threads()}
    return info


def peaks(ctx: Context) -> dict:
    import torch

    from onetok.bench import kernel_speed
    from onetok.timing import median_time

    numel = (2**28 if ctx.device == "cuda" else 2**24)  # fp32: 1 GiB on CUDA, 64 MiB on CPU
    src = torch.randn(numel, device=ctx.device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), ctx.device, repeats=10 if ctx.device == "cuda" else 3).median_s
    result = {"copy_gb_s": 2 * numel * 4 / seconds / 1e9, "copy_bytes": numel * 4,
              "copy_note": "bytes read + written per second"}
    dtypes = ["fp32", "bf16"] if ctx.device == "cuda" else ["fp32"]
    result["matmul_gfma_s"] = kernel_speed.measure_peaks(ctx.device, dtypes)
    if ctx.device == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            result["matmul_gfma_s"]["tf32"] = kernel_speed.measure_peaks(ctx.device, ["fp32"])["fp32"]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    ctx.shared["peaks"] = result["matmul_gfma_s"]
    return result


def nearest_code(ctx: Context) -> dict:
    """The target shape, and the TiTok-S-128 quantizer's searches on both sides of the default path's size rule
    (`onetok.kernels.TORCH_SEARCH_MAX_SCORES`): fp32 at N = 128 ... 32768, bf16 at the three issue-27 sizes."""
    from onetok.bench import kernel_speed
    from onetok.bench.gpu_report import QUANTIZER_ROWS, TARGET
    from onetok.tokenizers.model import preset

    titok = preset("titok-s-128")  # the VQ tokenizer: cosine search, K = 4096 codes of D = 12
    if ctx.dry_run:
        target = {"N": [2048], "K": [512], "D": [TARGET["D"]]}
        rows_of = {"fp32": [128, 512], "bf16": [128]}
    else:
        target = {k: [v] for k, v in TARGET.items()}
        rows_of = {"fp32": sorted({*QUANTIZER_ROWS, 8192, 16384}), "bf16": list(QUANTIZER_ROWS)}
    cases = kernel_speed.nearest_code_cases(target, ["fp32", "bf16"], ["euclidean", "cosine"])
    cases += [{"N": n, "K": titok.codebook_size, "D": titok.code_dim, "dtype": dtype, "metric": "cosine",
               "label": "titok-s-128 quantizer"} for dtype, ns in rows_of.items() for n in ns]
    use_triton, status = kernel_speed.triton_status(ctx.device == "cuda")
    rows = kernel_speed.bench_nearest_code(cases, ctx.device, use_triton, repeats=10 if ctx.device == "cuda" else 2,
                                            seed=0, peaks=ctx.shared.get("peaks", {}))
    return {"triton": status if ctx.device == "cuda" else "skipped: needs CUDA (dry run on CPU)", "rows": rows}


def sjd_verify(ctx: Context) -> dict:
    from onetok.bench import kernel_speed

    vocab = 6 + 256 + 4096  # specials + UTF-8 bytes + a 4096-code tokenizer
    cases = [(1, 16, 512), (4, 16, 512)] if ctx.dry_run else [(1, 16, vocab), (16, 16, vocab), (16, 16, 32768)]
    use_triton, status = kernel_speed.triton_status(ctx.device == "cuda")
    rows = kernel_speed.bench_sjd(cases, ctx.device, use_triton, repeats=10 if ctx.device == "cuda" else 2, seed=0)
    return {"triton": status if ctx.device == "cuda" else "skipped: needs CUDA (dry run on CPU)", "rows": rows}


KERNEL_TEST_FILES = ("test_kernels.py", "test_kernel_compile.py", "test_kernel_speed.py")


def gpu_marked_files(tests: Path) -> list[str]:
    """The test files other than the kernel ones that mark any test `gpu`: the only ones worth collecting on the
    device (the others may import packages the GPU image lacks, and would fail to collect)."""
    marks = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\b.*\bgpu\b)", re.M)
    return [str(f) for f in sorted(tests.glob("test_*.py"))
            if f.name not in KERNEL_TEST_FILES and marks.search(f.read_text(encoding="utf-8"))]


def kernel_tests(ctx: Context) -> dict:
    """pytest in subprocesses. On CUDA: the kernel test files, compiled on the device (xdist when it imports), then
    the `gpu`-marked tests of the other files that mark any (only those files are collected: the rest may import
    packages the GPU image lacks). In a dry run: the `gpu`-marked kernel tests only, which skip themselves without
    CUDA (the plumbing is what runs)."""
    tests = ctx.checkout / "tests"
    pytest = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    if ctx.dry_run:
        runs = {"kernel_tests": [*pytest, "-m", "gpu", str(tests / "test_kernels.py")]}
    else:
        parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []
        marked = gpu_marked_files(tests)
        runs = {"kernel_tests": [*pytest, *parallel, *(str(tests / name) for name in KERNEL_TEST_FILES)],
                "gpu_marked_elsewhere": [*pytest, "-m", "gpu", *marked] if marked else None}
    results, log = {}, []
    for name, cmd in runs.items():
        if cmd is None:
            results[name] = {"skipped": "no other test file marks a test `gpu`"}
            continue
        if ctx.left() < 20:
            results[name] = {"skipped": f"deadline: {ctx.left():.0f} s left"}
            continue
        output, code = _run_child(ctx, cmd, max(10.0, min(240.0, ctx.left() - 10)))
        log.append(f"--- {name}: {' '.join(cmd[2:])}\n{output}")
        results[name] = {"command": " ".join(cmd[2:]).replace(f"{ctx.checkout}/", ""),
                         "returncode": code, "passed": code in (0, 5),  # 5: no test selected
                         "summary": re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error|deselected).*?)\s*=*$",
                                               output, re.M),
                         "failed": re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)[:50]}
    (ctx.out / "gpu_check_pytest.log").write_text("\n".join(log))
    return {**results, "log": "gpu_check_pytest.log"}


def _run_child(ctx: Context, cmd: list[str], timeout: float) -> tuple[str, int | str]:
    """(output, return code or "timeout"); the child is registered so that the deadline watchdog can kill it. It runs
    in the scratch folder: `python -m` puts the working directory first on sys.path, and a checkout's own `onetok/`
    folder (no sub-packages in it) would hide the installed package."""
    child = subprocess.Popen(cmd, cwd=ctx.scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.shared.setdefault("children", []).append(child)
    try:
        output, _ = child.communicate(timeout=timeout)
        return output, child.returncode
    except subprocess.TimeoutExpired:
        child.kill()
        output, _ = child.communicate()
        return output + f"\n[gpu_check: killed after {timeout:.0f} s]", "timeout"
    finally:
        ctx.shared["children"].remove(child)


SECTIONS_KERNELS = [
    Section("environment", environment, 30, 30),
    Section("peaks", peaks, 20, 20),
    Section("nearest_code", nearest_code, 60, 30),
    Section("sjd_verify", sjd_verify, 10, 10),
]


def _model_section(name: str, module: str = "gpu_models"):
    """A section of `gpu_models` or `gpu_side` (imported only when it runs: they need timm/einops/lightning)."""
    return lambda ctx: getattr(importlib.import_module(f"onetok.bench.{module}"), name)(ctx)


SECTIONS = [
    *SECTIONS_KERNELS,
    Section("tokenizer_reference", _model_section("tokenizer_reference", "gpu_side"), 60, 40,
            requires=("einops",)),
    Section("natural_model", _model_section("natural_model"), 90, 60, requires=("einops", "lightning")),
    Section("otok_cuda", _model_section("otok_cuda", "gpu_side"), 20, 20, requires=("constriction",)),
    Section("tests", kernel_tests, 60, 20, requires=("pytest",)),
    Section("sampling_random", _model_section("sampling_random"), 60, 60, requires=("timm", "einops")),
    Section("tokenizer_speed", _model_section("tokenizer_speed"), 30, 10, requires=("einops",)),
    Section("train_rates", _model_section("train_rates"), 45, 40, requires=("timm", "einops", "lightning", "yaml")),
    Section("sampling_trained", _model_section("sampling_trained"), 60, 60,
            requires=("timm", "einops", "lightning")),
]



# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CheckOptions:
    out: Path
    dry_run: bool = False
    deadline_s: float = GPU_CHECK_DEADLINE_S
    only: set[str] | None = None  # section names (None: all)
    model: str | None = None  # `sampling_trained`'s model folder (None: train one)
    natural_model: str | None = None  # `natural_model`'s folder (None: the built-in one)
    reference: str | None = None  # a bytedance/1d-tokenizer checkout (None: CHECKOUT/third_party/1d-tokenizer)
    checkout: Path = Path(".")
    argv: list[str] = field(default_factory=list)  # as given, recorded in the report


def _watchdog(ctx: Context, report: dict, reporter, current: dict) -> threading.Timer:
    """At the deadline: kill the section's children, record the section as killed, write the report, exit 3."""

    def on_deadline() -> None:
        for child in list(ctx.shared.get("children", [])):
            child.kill()
        if current["name"]:
            report["sections"][current["name"]] = {"status": "error", "error": "killed at the deadline"}
        reporter.write()
        print(f"gpu_check: deadline reached during {current['name']}; report written to {ctx.out}", flush=True)
        os._exit(3)

    watchdog = threading.Timer(max(1.0, ctx.left()), on_deadline)
    watchdog.daemon = True
    return watchdog


def run_check(options: CheckOptions) -> tuple[dict, int]:
    """Every section (or `options.only`) in order; (the report, 1 if a section failed else 0). The report files
    are rewritten after each section; a run past the deadline exits the process with code 3."""
    import torch

    from onetok.bench.gpu_report import Reporter

    t0 = time.monotonic()
    unknown = (options.only or set()) - {s.name for s in SECTIONS}
    if unknown:
        raise ValueError(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    if not options.dry_run and not torch.cuda.is_available():
        raise ValueError("no CUDA device (use --dry-run to run on CPU)")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="onetok-gpu-check-"))
    report = {"format": "onetok-gpu-check", "version": 1, "started": datetime.datetime.now().isoformat(" ", "seconds"),
              "dry_run": options.dry_run, "deadline_s": options.deadline_s, "argv": options.argv, "sections": {}}
    reporter = Reporter(out, report, t0)
    ctx = Context(out=out, scratch=scratch, dry_run=options.dry_run, device="cpu" if options.dry_run else "cuda",
                  deadline=t0 + options.deadline_s, checkout=Path(options.checkout).resolve(), model_dir=options.model,
                  shared={"natural_model": options.natural_model, "reference_dir": options.reference})
    current = {"name": None}
    watchdog = _watchdog(ctx, report, reporter, current)
    watchdog.start()
    for section in SECTIONS:
        if options.only and section.name not in options.only:
            continue
        current["name"] = section.name
        print(f"[gpu_check {time.monotonic() - t0:6.1f} s] {section.name} ...", flush=True)
        result = report["sections"][section.name] = run_section(section, ctx)
        current["name"] = None
        print(f"[gpu_check {time.monotonic() - t0:6.1f} s] {section.name}: {result['status']} "
              f"{result.get('reason') or result.get('error') or ''}", flush=True)
        reporter.write()
    watchdog.cancel()
    reporter.write()
    shutil.rmtree(scratch, ignore_errors=True)
    return report, 1 if any(s["status"] == "error" for s in report["sections"].values()) else 0
