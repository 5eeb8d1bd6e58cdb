"""`onetok bench startup`: wall-clock time of whole `onetok` processes, from exec to exit, beside the floor set by the
interpreter and by `import torch` in the same run.

Cases (each a fresh `python -m onetok.scripts.cli ...` process, interleaved round by round so that load drifts hit
all alike; the median of `--runs` rounds is reported):

- `--help`, and argument and path errors (a missing model, a missing image, a bad flag value): target < 0.5 s;
- `caption` of the bundled sample photo with a unified model (`--model`, default: a random model of the demo's size,
  the shapes presets -- the compute is the same as a trained one's): target <= 2.5 s;
- `compress` of the bundled 600 x 400 sample photo (`--tokenizer`, default: the built-in photo tokenizer, else a
  random tokenizer of the `photo` preset): target <= 2.5 s.

The targets are for 2 idle cores; `--omp-threads N` sets OMP_NUM_THREADS for the timed processes. The heavy packages
each case imports are listed, so a regression names its cause.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "torchvision", "timm", "lightning", "matplotlib", "torchmetrics", "vector_quantize_pytorch",
         "scipy", "triton", "webdataset")
ERROR_TARGET_S, WORK_TARGET_S = 0.5, 2.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=5, metavar="N", help="rounds; medians are reported (default 5)")
    parser.add_argument("--model", metavar="DIR", help="unified model for caption (default: a random demo-size one)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer for compress (default: the built-in photo "
                                                           "tokenizer, else a random one of the photo preset)")
    parser.add_argument("--omp-threads", type=int, metavar="N", help="OMP_NUM_THREADS of the timed processes "
                                                                     "(default: inherited)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _models(args: argparse.Namespace, root: Path) -> tuple[str, str]:
    """(unified model dir, tokenizer dir): the given ones, else random ones of the demo's and the photo preset's size."""
    import torch

    from onetok.tokenizers import Tokenizer, preset, registry

    tokenizer = args.tokenizer
    if tokenizer is None:
        try:
            tokenizer = str(registry.builtin())
        except FileNotFoundError:
            torch.manual_seed(0)
            Tokenizer(preset("photo")).save_pretrained(root / "photo_tokenizer")
            tokenizer = str(root / "photo_tokenizer")
    model = args.model
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


def _time(argv: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, proc.returncode


def heavy_imports(argv: list[str], env: dict) -> list[str]:
    """The HEAVY packages a process imports (python -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    return [name for name in HEAVY if name in loaded]


def run(args: argparse.Namespace) -> int:
    from onetok.data.images import sample_photo

    env = dict(os.environ)
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    with tempfile.TemporaryDirectory(prefix="onetok-startup-") as tmp:
        root = Path(tmp)
        model, tokenizer = _models(args, root)
        table = cases(model, tokenizer, str(sample_photo()), root)
        times: dict[str, list[float]] = {name: [] for name in table}
        codes: dict[str, int] = {}
        for _ in range(args.runs):  # interleaved rounds
            for name, (argv, _) in table.items():
                seconds, codes[name] = _time(argv, env)
                times[name].append(seconds)
        imports = {name: heavy_imports(argv, env) for name, (argv, _) in table.items() if "baseline" not in name}
    torch_s = statistics.median(times["import torch (baseline)"])
    rows = [{"case": name, "median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
             "vs_import_torch": round(statistics.median(t) / torch_s, 2), "exit_code": codes[name],
             "target_s": table[name][1], "heavy_imports": imports.get(name),
             "meets_target": None if table[name][1] is None else statistics.median(t) < table[name][1]}
            for name, t in times.items()]
    if args.json:
        print(json.dumps({"runs": args.runs, "omp_threads": env.get("OMP_NUM_THREADS"), "load_avg": os.getloadavg(),
                          "rows": rows}, indent=1))
        return 0
    print(f"onetok start-up: {args.runs} interleaved rounds, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':<26} {'median s':>9} {'min s':>7} {'/ torch':>8} {'target':>7} {'exit':>5}  heavy imports")
    for r in rows:
        target = "-" if r["target_s"] is None else f"<{r['target_s']:g}" + (" ok" if r["meets_target"] else " !!")
        print(f"{r['case']:<26} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['vs_import_torch']:>8.2f} {target:>7} "
              f"{r['exit_code']:>5}  {', '.join(r['heavy_imports'] or []) or '-'}")
    return 0
