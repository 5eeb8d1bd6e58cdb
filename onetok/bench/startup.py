"""`onetok bench startup`: wall-clock time of whole `onetok` processes, from exec to exit, beside the floor set by the
interpreter and by `import torch` in the same run.

Cases (each a fresh `python -m onetok.scripts.cli ...` process, interleaved round by round so that load drifts hit
all alike; the median of `--runs` rounds is reported):

- `--help`, and argument and path errors (a missing model, a missing image, a bad flag value): target
  `ERROR_TARGET_S`;
- `caption` of the bundled sample photo with a unified model (`--model`, default: a random model of the demo's size,
  the shapes presets -- the compute is the same as a trained one's): target `WORK_TARGET_S`;
- `compress` of the bundled 600 x 400 sample photo (`--tokenizer`, default: the built-in photo tokenizer, else a
  random tokenizer of the `photo` preset): target `WORK_TARGET_S` (both in `onetok.bench.defaults`).

The targets are for 2 idle cores; `--omp-threads N` sets OMP_NUM_THREADS for the timed processes. The heavy packages
each case imports are listed, so a regression names its cause.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from onetok.bench.defaults import STARTUP_ERROR_TARGET_S as ERROR_TARGET_S
from onetok.bench.defaults import STARTUP_RUNS
from onetok.bench.defaults import STARTUP_WORK_TARGET_S as WORK_TARGET_S

HEAVY = ("torch", "torchvision", "timm", "lightning", "matplotlib", "torchmetrics", "vector_quantize_pytorch",
         "scipy", "triton", "webdataset")


def _models(model: str | None, tokenizer: str | None, root: Path) -> tuple[str, str]:
    """(unified model dir, tokenizer dir): the given ones, else random ones of the demo's and the photo preset's size."""
    import torch

    from onetok.tokenizers import Tokenizer, preset, registry

    if tokenizer is None:
        try:
            tokenizer = str(registry.builtin())
        except FileNotFoundError:
            torch.manual_seed(0)
            Tokenizer(preset("photo")).save_pretrained(root / "photo_tokenizer")
            tokenizer = str(root / "photo_tokenizer")
    if model is None:
        from onetok.ar_model.model import Transformer, config_from_preset
        from onetok.ar_model.unified import UnifiedModel
        from onetok.ar_model.vocab import Vocab, WordText
        from onetok.data.shapes import ATTRIBUTES, caption_of

        torch.manual_seed(0)
        shapes = Tokenizer(preset("shapes"))
        attrs = [dict(zip(ATTRIBUTES, values)) for values in zip(*(v * 30 for v in ATTRIBUTES.values()))]
        vocab = Vocab(shapes.codebook_size, WordText.from_captions(caption_of(a) for a in attrs))
        UnifiedModel(Transformer(config_from_preset("shapes", vocab.size)), vocab, shapes).save_pretrained(root / "m")
        model = str(root / "m")
    return model, tokenizer


def cases(model: str, tokenizer: str, photo: str, out: Path) -> dict[str, tuple[list[str], float | None]]:
    """name -> (argv after `python`, target seconds or None for a baseline)."""
    cli = ["-m", "onetok.scripts.cli"]
    return {
        "python (baseline)": (["-c", "pass"], None),
        "import torch (baseline)": (["-c", "import torch"], None),
        "onetok --help": ([*cli, "--help"], ERROR_TARGET_S),
        "caption: missing model": ([*cli, "caption", "--model", str(out / "nope"), photo], ERROR_TARGET_S),
        "compress: missing image": ([*cli, "compress", str(out / "nope.png"), "-o", str(out / "x.otok")],
                                    ERROR_TARGET_S),
        "sample: bad -n": ([*cli, "sample", "--model", model, "--prompt", "a", "-n", "0", "--out", str(out / "s")],
                           ERROR_TARGET_S),
        "caption 1 photo": ([*cli, "caption", "--model", model, photo], WORK_TARGET_S),
        "compress 1 photo": ([*cli, "compress", "--tokenizer", tokenizer, "--force", photo, "-o",
                              str(out / "photo.otok")], WORK_TARGET_S),
    }


def _process(argv: list[str], env: dict, codes: dict, name: str):
    """A call running `python argv` to its end, its exit code kept in codes[name]."""

    def run() -> None:
        codes[name] = subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL).returncode

    return run


def heavy_imports(argv: list[str], env: dict) -> list[str]:
    """The HEAVY packages a process imports (python -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    return [name for name in HEAVY if name in loaded]


def startup_report(runs: int = STARTUP_RUNS, model: str | None = None, tokenizer: str | None = None,
                   omp_threads: int | None = None) -> dict:
    """Every case of `cases` as a fresh process, `runs` interleaved rounds; per case the median and fastest
    seconds, the ratio to `import torch`, the exit code, the target met and the heavy packages imported."""
    from onetok.data.images import sample_photo
    from onetok.timing import interleaved

    env = dict(os.environ)
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    codes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="onetok-startup-") as tmp:
        root = Path(tmp)
        table = cases(*_models(model, tokenizer, root), str(sample_photo()), root)
        times = interleaved({name: _process(argv, env, codes, name) for name, (argv, _) in table.items()}, runs)
        imports = {name: heavy_imports(argv, env) for name, (argv, _) in table.items() if "baseline" not in name}
    torch_s = statistics.median(times["import torch (baseline)"])
    rows = [{"case": name, "median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
             "vs_import_torch": round(statistics.median(t) / torch_s, 2), "exit_code": codes[name],
             "target_s": table[name][1], "heavy_imports": imports.get(name),
             "meets_target": None if table[name][1] is None else statistics.median(t) < table[name][1]}
            for name, t in times.items()]
    return {"runs": runs, "omp_threads": env.get("OMP_NUM_THREADS"), "load_avg": os.getloadavg(),
            "cpu_count": os.cpu_count(), "rows": rows}


def format_report(report: dict) -> str:
    lines = [f"onetok start-up: {report['runs']} interleaved rounds, OMP_NUM_THREADS={report['omp_threads'] or 'unset'}, "
             f"load average {report['load_avg'][0]:.1f} on {report['cpu_count']} cores",
             f"{'case':<26} {'median s':>9} {'min s':>7} {'/ torch':>8} {'target':>7} {'exit':>5}  heavy imports"]
    for r in report["rows"]:
        target = "-" if r["target_s"] is None else f"<{r['target_s']:g}" + (" ok" if r["meets_target"] else " !!")
        lines.append(f"{r['case']:<26} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['vs_import_torch']:>8.2f} "
                     f"{target:>7} {r['exit_code']:>5}  {', '.join(r['heavy_imports'] or []) or '-'}")
    return "\n".join(lines)
