"""The GPU check's report (`onetok.bench.gpu_check`): the acceptance targets read off the sections, the markdown
rendering, and the writer that rewrites OUT/gpu_check.json and OUT/gpu_check.md after every section."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

TARGET = {"N": 65536, "K": 16384, "D": 16}  # issue 17's nearest-code acceptance shape
QUANTIZER_ROWS = (128, 4096, 32768)  # issue 27: one TiTok-S-128 image, a training batch of 32, 256 images
QUANTIZER_SHAPE = {"K": 4096, "D": 12, "metric": "cosine"}


def _row_of(rows: list, **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _result(report: dict, name: str) -> dict:
    return report["sections"].get(name, {}).get("result") or {}


def _target(report: dict, what: str, value, goal: float) -> dict:
    if report["dry_run"]:  # toy sizes on CPU: numbers that mean nothing against a GPU goal
        value = None
    return {"what": what, "value": value, "goal": f">= {goal}", "met": None if value is None else value >= goal}


def _sjd_batch1(result: dict) -> float | None:
    return next((r["plain_over_this"] for r in result.get("rows", []) if r["batch"] == 1 and r["mode"] == "sjd"),
                None)


def nearest_targets(report: dict) -> list[dict]:
    """Issues 17 and 27: the default nearest-code path at the target shape and at the quantizer's shapes."""
    rows = _result(report, "nearest_code").get("rows", [])
    big = _row_of(rows, **TARGET, dtype="fp32", metric="euclidean") or {}
    out = [_target(report, "nearest code fp32 N=65536 K=16384 D=16: cdist+argmin time / default path time",
                   big.get("speedup_vs_cdist", {}).get("default"), 5.0),
           _target(report, "same: addmm+argmin time / triton time", big.get("triton_vs_addmm"), 2.0),
           {"what": "same: triton peak extra MiB (O(N): 12 bytes per row + codes)",
            "value": None if report["dry_run"] else big.get("extra_mib", {}).get("triton"), "goal": "O(N)",
            "met": None}]
    for dtype in ("fp32", "bf16"):
        for n in QUANTIZER_ROWS:
            row = _row_of(rows, N=n, dtype=dtype, **QUANTIZER_SHAPE) or {}
            out.append(_target(report, f"nearest code {dtype} cosine N={n} K=4096 D=12: addmm+argmin time / "
                                       "default path time", row.get("default_vs_addmm"), 1.0))
    return out


def targets(report: dict) -> list[dict]:
    """The GPU acceptance numbers of issues 17 and 27, read off the sections (None = not measured)."""
    out = nearest_targets(report)
    tok = _result(report, "tokenizer_reference")
    for what in ("train", "encode", "decode"):
        out.append(_target(report, f"tokenizer titok-s-128 vs bytedance TiTok, {what} (bf16): reference time / ours",
                           tok.get(what, {}).get("ours_over_reference"), 1.3))
    natural = _result(report, "natural_model")
    out.append(_target(report, "SJD wall clock, batch 1, the built-in natural-image model: plain time / SJD time",
                       _sjd_batch1(natural), 1.5))
    sampling = _result(report, "sampling_random")
    out.append(_target(report, f"SJD wall clock, batch 1, {sampling.get('image_tokens')} image tokens (random "
                               "AR base): plain time / SJD time", _sjd_batch1(sampling), 1.5))
    otok = _result(report, "otok_cuda")
    out.append({"what": ".otok written on the CPU, decoded on the device: same ids", "goal": "true",
                "value": None if report["dry_run"] else otok.get("same_ids"),
                "met": None if report["dry_run"] or "same_ids" not in otok else bool(otok["same_ids"])})
    back = otok.get("device_written_same_on_cpu")
    out.append({"what": ".otok written on the device, decoded on the CPU: same ids", "goal": "true",
                "value": None if report["dry_run"] else back,
                "met": None if report["dry_run"] or back is None else bool(back)})
    runs = [r for r in _result(report, "tests").values() if isinstance(r, dict) and "command" in r]
    out.append({"what": "kernel and gpu-marked tests on the device pass", "value": None, "goal": "all pass",
                "met": None if report["dry_run"] or not runs else all(r.get("passed") for r in runs)})
    return out


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _header(report: dict) -> list[str]:
    env = _result(report, "environment")
    lines = [f"# onetok GPU check — {report['started']}", "",
             f"Device: {env.get('device', {}).get('name', '?')}; torch {env.get('torch', '?')}, triton "
             f"{env.get('packages', {}).get('triton', '?')}, python {env.get('python', '?')}. "
             f"{'DRY RUN on CPU (CUDA-only parts skipped). ' if report['dry_run'] else ''}"
             f"{report.get('elapsed_s', 0):.0f} s of a {report['deadline_s']:.0f} s deadline.", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['what']} | {_fmt(t['value'])} | {t['goal']} | {_fmt(t['met'])} |" for t in report["targets"]]
    lines += ["", "| section | status | seconds | note |", "|---|---|---|---|"]
    for name, sec in report["sections"].items():
        note = sec.get("reason") or sec.get("error") or ""
        lines.append(f"| {name} | {sec['status']} | {_fmt(sec.get('seconds'))} | {note[:150]} |")
    return lines


def markdown(report: dict) -> str:
    lines = _header(report)
    peaks = _result(report, "peaks")
    if peaks:
        rates = ", ".join(f"{k} {_fmt(v.get('gfma_s'), '.0f')}" for k, v in peaks["matmul_gfma_s"].items())
        lines += ["", f"Copy {peaks['copy_gb_s']:.0f} GB/s (read + write); square matmul GFMA/s: {rates}."]
    for name in ("nearest_code", "sjd_verify"):
        result = _result(report, name)
        if result:
            lines += ["", f"**{name}** (Triton: {result['triton']})"]
            lines += _nearest_table(result["rows"]) if name == "nearest_code" else _sjd_table(result["rows"])
    lines += _tokenizer_table(_result(report, "tokenizer_reference"))
    for name in ("natural_model", "sampling_random", "sampling_trained"):
        lines += _sampling_table(name, _result(report, name))
    lines += _otok_lines(_result(report, "otok_cuda"))
    lines += _training_lines(report)
    for name, run in _result(report, "tests").items():
        if isinstance(run, dict) and "skipped" in run:
            lines += ["", f"Tests, {name}: skipped ({run['skipped']})"]
        if isinstance(run, dict) and "command" in run:
            lines += ["", f"Tests, {name} (`{run['command']}`): {'; '.join(run['summary']) or run['returncode']}"
                          f"{'; failed: ' + ', '.join(run['failed']) if run['failed'] else ''}"]
    return "\n".join(lines) + "\n"


def _nearest_table(rows: list) -> list[str]:
    if not rows:
        return []
    lines = ["", "| N | K | D | dtype | metric | method | ms | GFMA/s | % peak | x cdist | x addmm | extra MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        addmm = r["ms"].get("addmm+argmin")
        for method in ("default", "triton", "addmm+argmin", "cdist+argmin", "reference"):
            if method in r["ms"] or method in r["errors"]:
                frac, ms = r["peak_fraction"].get(method), r["ms"].get(method)
                name = f"default ({r['default_path']})" if method == "default" and r.get("default_path") else method
                lines.append(
                    f"| {r['N']} | {r['K']} | {r['D']} | {r['dtype']} | {r['metric']} | {name} | "
                    f"{_fmt(ms, '.3f') if method in r['ms'] else r['errors'][method][:60]} | "
                    f"{_fmt(r['gfma_s'].get(method), '.0f')} | {_fmt(None if frac is None else 100 * frac, '.0f')} | "
                    f"{_fmt(r['speedup_vs_cdist'].get(method), '.2f')} | "
                    f"{_fmt(addmm / ms if addmm and ms else None, '.2f')} | {_fmt(r['extra_mib'].get(method), '.1f')} |")
    return lines


def _sjd_table(rows: list) -> list[str]:
    lines = ["", "| B | W | V | reference ms | triton ms | speed-up | errors |", "|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['B']} | {r['W']} | {r['V']} | {_fmt(r['ms'].get('reference'), '.3f')} | "
                    f"{_fmt(r['ms'].get('triton'), '.3f')} | {_fmt(r.get('speedup'), '.2f')} | "
                    f"{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())[:120]} |" for r in rows]


def _tokenizer_table(result: dict) -> list[str]:
    if "train" not in result:
        return []
    lines = ["", f"**tokenizer_reference**: {result['preset']} ({result['params_m']['ours']} M params) vs "
                 f"bytedance/1d-tokenizer TiTok ({result['params_m']['reference']} M), {result['precision']}, "
                 f"{result['rounds']} interleaved rounds", "",
             "| what | batch | ours / s | reference / s | reference time ÷ ours (median of rounds) |",
             "|---|---|---|---|---|"]
    return lines + [f"| {what} ({r['unit']}) | {r['batch']} | {_fmt(r['ours_per_s'])} | {_fmt(r['reference_per_s'])} "
                    f"| {_fmt(r['ours_over_reference'], '.2f')} |"
                    for what, r in ((w, result[w]) for w in ("train", "encode", "decode"))]


def _sampling_table(name: str, result: dict) -> list[str]:
    if "rows" not in result:
        return []
    lines = ["", f"**{name}**: {result.get('model', '')} {result.get('tokenizer', '')} — "
                 f"{result['image_tokens']} image tokens, {result['dtype']}", "",
             "| batch | mode | s / batch | images / s | passes | tokens / SJD pass | plain / this |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['mode']} | {_fmt(r['seconds'])} | {_fmt(r['batch'] / r['seconds'])} | "
              f"{r['forward_passes']} | {_fmt(r['mean_tokens_per_pass'])} | {_fmt(r['plain_over_this'])} |"
              for r in result["rows"]]
    train = result.get("train")
    if train:
        lines += ["", f"Training (bf16-mixed, synthetic rows of {train['tokens_per_row']} tokens): "
                      f"{_fmt(train['steps_per_s'])} steps/s at batch {train['batch']}."]
    return lines


def _otok_lines(result: dict) -> list[str]:
    if "same_ids" not in result:
        return []
    return ["", f"**otok_cuda**: {result['bytes']} bytes written on the CPU ({result['tiles']} tiles, "
                f"{result['ids']} ids), decoded on {result['device']}: same ids {result['same_ids']}, same counts "
                f"{result['same_counts']}; pixels max |diff| {_fmt(result['pixel_max_abs_diff'])}, PSNR between the "
                f"two decodes {_fmt(result['pixel_psnr_db'])} dB; decode {_fmt(result['cpu_decode_s'])} s on the "
                f"CPU, {_fmt(result['device_decode_s'])} s on the device. A file written on {result['device']} "
                f"({result.get('device_written_bytes')} bytes) read on the CPU: same ids "
                f"{result.get('device_written_same_on_cpu')}."]


def _training_lines(report: dict) -> list[str]:
    lines = []
    rates = _result(report, "train_rates")
    if rates:
        lines += ["", "| training (bf16-mixed) | batch | steps / s |", "|---|---|---|"]
        lines += [f"| {r['config']} | {r['batch']} | {_fmt(r['steps_per_s'])} |" for r in rates.values()]
    speed = _result(report, "tokenizer_speed")
    if speed:
        lines += ["", "| tokenizer (random weights) | dtype | batch | encode img/s | decode img/s | ms per stage |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['dtype']} | {r['batch']} | {_fmt(r['encode_images_per_s'])} | "
                  f"{_fmt(r['decode_images_per_s'])} | "
                  f"{', '.join(f'{k} {_fmt(v)}' for k, v in r['stage_ms'].items())} |" for r in speed["rows"]]
    return lines


class Reporter:
    """Holds the report and writes OUT/gpu_check.json + OUT/gpu_check.md atomically (thread-safe: the watchdog
    writes too)."""

    def __init__(self, out: Path, report: dict, t0: float):
        self.out, self.report, self.t0, self.lock = out, report, t0, threading.Lock()

    def write(self) -> None:
        with self.lock:
            self.report["elapsed_s"] = time.monotonic() - self.t0
            self.report["targets"] = targets(self.report)
            data = json.loads(json.dumps(self.report, default=str))  # a snapshot
            for name, text in (("gpu_check.json", json.dumps(data, indent=1, default=str)),
                               ("gpu_check.md", markdown(data))):
                tmp = self.out / f".{name}.tmp"
                tmp.write_text(text)
                tmp.replace(self.out / name)
