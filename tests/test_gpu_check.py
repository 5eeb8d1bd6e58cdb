"""The prepared GPU check (`onetok.bench.gpu_check`, run by scripts/gpu_check.sh): installs the checkout and runs
from that install, records every section's outcome instead of failing, stops at its deadline, and runs end to end
on CPU in dry-run mode."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onetok.bench import gpu_check
from onetok.scripts.gpu_check import main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_the_script_runs_the_check_from_an_install_of_the_checkout(tmp_path):
    """gpu_check.sh installs a copy of the checkout (no index, no build isolation) and the check imports onetok from
    that install, not from the checkout's folders; nothing is left in the checkout."""
    before = {p.name for p in REPO.iterdir()}
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run", "--only", "environment"],
                         capture_output=True, text=True, timeout=400, check=False,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    env = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["sections"]["environment"]["result"]
    installed = Path(env["onetok"])
    assert installed.name == "onetok" and installed.parent.name == "site" and not installed.is_relative_to(REPO)
    assert {p.name for p in REPO.iterdir()} == before and not installed.exists()  # the temporary install is gone
    assert (tmp_path / "out" / "gpu_check.log").read_text().count("environment: ok") == 1


def test_a_failed_install_is_one_clear_error(tmp_path):
    broken = tmp_path / "python3"
    broken.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    broken.chmod(0o755)
    run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "PYTHON": str(broken)})
    assert run.returncode == 2
    assert f"gpu_check.sh: could not install the checkout with {broken}" in run.stderr
    assert "No module named pip" in run.stderr and not (tmp_path / "out" / "gpu_check.json").exists()


def _ctx(tmp_path, left=100.0, dry_run=True):
    import time

    return gpu_check.Context(out=tmp_path, scratch=tmp_path, dry_run=dry_run, device="cpu",
                             deadline=time.monotonic() + left, checkout=REPO)


def test_a_section_never_raises(tmp_path):
    def boom(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    run = gpu_check.run_section
    failed = run(gpu_check.Section("boom", boom, 1, 1), _ctx(tmp_path))
    assert failed["status"] == "error" and "illegal memory access" in failed["error"] and "boom" in failed["traceback"]
    ok = run(gpu_check.Section("ok", lambda ctx: {"x": 1}, 1, 1), _ctx(tmp_path))
    assert ok["status"] == "ok" and ok["result"] == {"x": 1} and ok["seconds"] >= 0
    missing = run(gpu_check.Section("m", lambda ctx: {}, 1, 1, requires=("no_such_package_xyz",)), _ctx(tmp_path))
    assert missing == {"status": "skipped", "reason": missing["reason"]} and "no_such_package_xyz" in missing["reason"]
    cuda = run(gpu_check.Section("c", lambda ctx: {}, 1, 1, cuda_only=True), _ctx(tmp_path))
    assert cuda["reason"] == "needs CUDA (dry run on CPU)"
    late = run(gpu_check.Section("late", lambda ctx: {}, 60, 50), _ctx(tmp_path, left=30))
    assert late["status"] == "skipped" and late["reason"].startswith("deadline")


def test_the_watchdog_writes_the_report_and_stops_at_the_deadline(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        import torch  # imported before the clock starts: on a loaded machine it can take longer than the deadline
        from onetok.bench import gpu_check as g, gpu_report
        from onetok.scripts.gpu_check import main
        g.SECTIONS[:] = [g.Section("quick", lambda ctx: {{"done": True}}, 0, 0),
                         g.Section("hangs", lambda ctx: time.sleep(60), 0, 0)]
        sys.exit(main(["--out", {str(tmp_path)!r}, "--dry-run", "--deadline-s", "10", "--checkout", {str(REPO)!r}]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["quick"]["status"] == "ok"
    assert report["sections"]["hangs"] == {"status": "error", "error": "killed at the deadline"}
    assert "deadline reached during hangs" in run.stdout


def tiny_unified_model(folder: Path) -> Path:
    """A random-weight unified model of the `tiny` presets, saved as a model folder."""
    from onetok.ar_model.model import ARConfig, Transformer
    from onetok.ar_model.unified import UnifiedModel
    from onetok.ar_model.vocab import Vocab
    from onetok.tokenizers import Tokenizer
    from onetok.tokenizers.model import PRESETS

    tokenizer = Tokenizer(PRESETS["tiny"])
    vocab = Vocab(codebook_size=tokenizer.codebook_size)  # bytes: any prompt encodes
    transformer = Transformer(ARConfig(vocab_size=vocab.size, dim=16, n_layers=1, n_heads=2, max_seq_len=96))
    UnifiedModel(transformer, vocab, tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, monkeypatch):
    """Every section but `tests` (a pytest inside pytest) on CPU at toy sizes, with the GPU image's missing
    vector-quantize-pytorch simulated (the shapes tokenizer falls back to our VQ). `tokenizer_reference` runs when
    a bytedance/1d-tokenizer checkout lies at third_party/1d-tokenizer (git-ignored) and is skipped, saying where
    it looked, when not."""
    from onetok.bench import gpu_models, gpu_side
    from onetok.tokenizers.model import preset

    monkeypatch.setattr(gpu_models, "shapes_tokenizer_config",
                        lambda: preset("shapes", quantizer="vq", code_dim=8, codebook_size=512))
    sections = [s.name for s in gpu_check.SECTIONS if s.name != "tests"]
    model = tiny_unified_model(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["--out", str(out), "--dry-run", "--only", ",".join(sections), "--natural-model", str(model),
                 "--checkout", str(REPO)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and list(report["sections"]) == sections
    reference = report["sections"].pop("tokenizer_reference")
    if (REPO / gpu_side.REFERENCE_DIR / "modeling").is_dir():
        assert reference["status"] == "ok", reference
        for what in ("train", "encode", "decode"):
            assert reference["result"][what]["ours_per_s"] > 0 and reference["result"][what]["reference_per_s"] > 0
    else:
        assert reference["status"] == "skipped" and str(REPO / gpu_side.REFERENCE_DIR) in reference["reason"]
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["sections"]
    result = {name: s["result"] for name, s in report["sections"].items()}
    assert result["nearest_code"]["triton"] == result["sjd_verify"]["triton"] == "skipped: needs CUDA (dry run on CPU)"
    rows = result["nearest_code"]["rows"]
    assert {(r["dtype"], r["metric"]) for r in rows} >= {("fp32", "euclidean"), ("bf16", "cosine")}
    assert all(r["ms"] and "triton" not in r["ms"] for r in rows)
    for name in ("sampling_random", "sampling_trained", "natural_model"):
        modes = {(r["batch"], r["mode"]) for r in result[name]["rows"]}
        assert modes == {(b, m) for b in (1, 2) for m in ("plain", "sjd")}
    assert result["natural_model"]["train"]["steps_per_s"] > 0
    assert result["otok_cuda"]["same_ids"] and result["otok_cuda"]["same_counts"]
    assert (out / result["otok_cuda"]["file"]).stat().st_size == result["otok_cuda"]["bytes"]
    assert result["otok_cuda"]["device_written_same_on_cpu"] and result["otok_cuda"]["device_written_bytes"] > 0
    assert {r["default_path"] for r in result["nearest_code"]["rows"]} == {"torch"}  # on the CPU: always torch
    assert result["sampling_trained"]["tokenizer"].startswith("shapes preset, vq")
    assert result["train_rates"]["tokenizer"]["steps_per_s"] > 0 and result["train_rates"]["ar"]["steps_per_s"] > 0
    speed = result["tokenizer_speed"]["rows"]
    assert [r["dtype"] for r in speed] == ["bfloat16", "float32"] and all(r["decode_images_per_s"] > 0 for r in speed)
    assert all(t["value"] is None for t in report["targets"])  # no GPU numbers from a dry run
    text = (out / "gpu_check.md").read_text()
    assert "DRY RUN on CPU" in text and "| sampling_trained | ok |" in text and "**otok_cuda**" in text
    assert "**natural_model**" in text and "default (torch)" in text


def test_natural_model_is_skipped_with_a_note_without_its_folder(tmp_path):
    from onetok.bench import gpu_models, gpu_side

    ctx = _ctx(tmp_path)
    ctx.shared["natural_model"] = str(tmp_path / "absent")
    result = gpu_check.run_section(gpu_check.Section("natural_model", gpu_models.natural_model, 1, 1), ctx)
    assert result["status"] == "skipped" and str(tmp_path / "absent") in result["reason"]
    ctx.shared["reference_dir"] = str(tmp_path / "absent")
    result = gpu_check.run_section(gpu_check.Section("t", gpu_side.tokenizer_reference, 1, 1), ctx)
    assert result["status"] == "skipped" and "1d-tokenizer" in result["reason"]


def test_interleaved_pairs_alternate_and_take_the_median_ratio(tmp_path, monkeypatch):
    from onetok import timing
    from onetok.bench import gpu_side

    calls, now, takes = [], [0.0], {"reference": 3.0, "ours": 1.0}  # seconds each call "takes"

    def call(who):
        return lambda: calls.append(who) or now.__setitem__(0, now[0] + takes[who])

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    result = gpu_side.interleaved_pairs(_ctx(tmp_path), {"x": (call("reference"), call("ours"))}, rounds=3)
    assert calls == ["reference", "ours", "ours", "reference", "reference", "ours"]
    assert result["x"] == {"reference_s": 3.0, "ours_s": 1.0, "ours_over_reference": 3.0}


def test_unknown_sections_and_a_missing_device_are_one_line_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--dry-run", "--only", "environment,nope", "--checkout", str(REPO)]) == 2
    assert capsys.readouterr().err.strip() == "gpu_check: --only: unknown section(s) nope"
    assert main(["--out", str(tmp_path), "--checkout", str(tmp_path)]) == 2
    assert "not an onetok checkout" in capsys.readouterr().err
