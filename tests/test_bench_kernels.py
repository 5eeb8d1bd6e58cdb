"""`onetok bench kernels`: every case records a time or an error, never crashes the run; GFMA/s and peak fractions."""

import json

import pytest
import torch

from onetok.bench import defaults
from onetok.bench import kernel_speed as bench_kernels
from onetok.scripts.cli import main

TINY = {"N": [64, 96], "K": [48], "D": [12]}


def test_a_failing_method_is_recorded_and_the_rest_still_run(monkeypatch):
    real = bench_kernels._nearest_code_methods

    def with_failures(z, codebook, metric, use_triton):
        methods = real(z, codebook, metric, use_triton)

        def broken():
            raise RuntimeError("no kernel image is available for execution on the device\nsecond line")

        def oom():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

        methods["addmm+argmin"], methods["triton"] = broken, oom
        return methods

    monkeypatch.setattr(bench_kernels, "_nearest_code_methods", with_failures)
    cases = bench_kernels.nearest_code_cases(TINY, ["fp32"], ["euclidean", "cosine"])
    peaks = {"fp32": {"gfma_s": 10.0}}
    rows = bench_kernels.bench_nearest_code(cases, "cpu", use_triton=False, repeats=1, seed=0, peaks=peaks)
    assert len(rows) == 4
    for row in rows:
        assert row["errors"]["addmm+argmin"] == "RuntimeError: no kernel image is available for execution on the device"
        assert row["errors"]["triton"] == "out of memory"
        assert set(row["ms"]) == {"cdist+argmin", "reference", "default"} and row["default_path"] == "torch"
        for method, ms in row["ms"].items():
            assert row["gfma_s"][method] == pytest.approx(row["N"] * row["K"] * row["D"] / ms / 1e6)
            assert row["peak_fraction"][method] == pytest.approx(row["gfma_s"][method] / 10.0)
        assert row["triton_vs_addmm"] is None and row["speedup_vs_cdist"]["cdist+argmin"] == 1.0


def test_a_case_that_cannot_be_set_up_is_recorded():
    rows = bench_kernels.bench_nearest_code([{"N": 8, "K": 4, "D": 3, "dtype": "int4", "metric": "euclidean"}],
                                            "cpu", use_triton=False, repeats=1, seed=0)
    assert rows[0]["errors"]["case"].startswith("KeyError") and rows[0]["ms"] == {}
    sjd = bench_kernels.bench_sjd([(2, 3, 0)], "cpu", use_triton=False, repeats=1, seed=0)  # V = 0: no distribution
    assert "case" in sjd[0]["errors"] or "reference" in sjd[0]["errors"]


def test_bench_kernels_cli_json(monkeypatch, capsys):
    for grid in ("KERNEL_CPU_GRID", "KERNEL_QUICK_GPU_GRID", "KERNEL_FULL_GRID"):  # tiny on any device
        monkeypatch.setattr(defaults, grid, TINY)
    for cases in ("SJD_VERIFY_CPU", "SJD_VERIFY_FULL"):
        monkeypatch.setattr(defaults, cases, [(2, 3, 50)])
    monkeypatch.setattr(bench_kernels, "measure_peaks", lambda device, dtypes: {"fp32": {"gfma_s": 5.0, "size": 8}})
    args = ["bench", "kernels", "--repeats", "1", "--dtypes", "fp32"]
    assert main([*args, "--json", "--metrics", "euclidean,cosine"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["nearest_code"]) == 4 and report["matmul_peak"]["fp32"]["gfma_s"] == 5.0
    methods = {"cdist+argmin", "addmm+argmin", "reference", "default"} | ({"triton"} if report["triton"] else set())
    assert all(set(row["ms"]) == methods for row in report["nearest_code"])
    assert all(row["default_vs_addmm"] > 0 for row in report["nearest_code"])
    assert report["sjd_verify"][0]["ms"]["reference"] > 0
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "GFMA/s cdist" in table and "%pk" in table and "def/addmm" in table
    assert ("triton: available" if torch.cuda.is_available() else "triton: unavailable") in table
    assert main(["bench", "kernels", "--dtypes", "fp8"]) == 2  # one-line error


def test_measure_peaks_on_cpu():
    peaks = bench_kernels.measure_peaks("cpu", ["fp32", "bf16"], repeats=1)
    assert set(peaks) == {"fp32"} and peaks["fp32"]["gfma_s"] > 0
