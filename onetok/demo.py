"""The end-to-end demo (`onetok demo`, what `make demo` runs): the whole pipeline on the built-in shapes data, then
the built-in photo codec on a real photograph and the built-in natural-image model (CIFAR-10 classes, no training).

Each step is one `onetok` / `onetok-train` command run as a subprocess (so its own progress bar shows) and writes
a marker `OUT/.done/<step>` when it succeeds: a re-run skips finished steps, a killed training run resumes from its
`last.ckpt`. At the end `OUT/metrics.json` and `OUT/report.md` gather the numbers and pictures (`demo_report`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from onetok.fileio import UserError

DEMO_PROMPTS = [
    "a large red circle in the center on a black background",
    "a small blue square in the top left on a white background",
    "a large green triangle in the bottom right on a gray background",
    "a small yellow circle in the top right on a black background",
    "a large purple square in the bottom left on a white background",
    "a small orange triangle in the center on a gray background",
    "a large blue circle in the top right on a gray background",
    "a small red triangle in the bottom left on a white background",
]


PHOTO_LADDER = (0.03, 0.05, 0.1, 0.2)  # bits per pixel of the real-photo rate ladder
NATURAL_PER_CLASS = 8  # samples per class in the natural-images grid
NATURAL_CAPTIONS = 2  # val images per class captioned (20 for CIFAR-10)
BUDGET_S = 20 * 60  # the whole demo on 2 CPU cores; the AR training's time cap is what the budget leaves
AFTER_AR_S = 330  # the AR export and the steps after it on a slow 2-core machine (230-283 s measured), with margin


class Demo:
    """The demo's steps in the folder `out`; `all()` runs those not done yet."""

    def __init__(self, out: Path, train_images: int, val_images: int, quick: bool):
        self.out, self.train_images, self.val_images, self.quick = out, train_images, val_images, quick
        self.done = out / ".done"
        self.data = out / "data"
        self.models = out / "models"
        self.timings: dict[str, float] = {}
        self.started = time.time()

    # ---- plumbing --------------------------------------------------------------------------------------------------

    def run(self, *argv: str, module: str = "onetok.scripts.cli", stdout: Path | None = None) -> None:
        cmd = [sys.executable, "-m", module, *argv]
        print(f"$ {'onetok-train' if module.endswith('train') else 'onetok'} {' '.join(argv)}", flush=True)
        if stdout is None:
            proc = subprocess.run(cmd)
        else:
            with open(stdout, "w") as sink:
                proc = subprocess.run(cmd, stdout=sink)
        if proc.returncode != 0:
            raise UserError(f"step failed (exit {proc.returncode}): {' '.join(argv)}")

    def step(self, name: str, fn) -> None:
        marker = self.done / name
        if marker.exists():
            print(f"[demo] {name}: done earlier, skipped", flush=True)
            return
        print(f"[demo] {name} ...", flush=True)
        start = time.time()
        fn()
        self.timings[name] = round(time.time() - start, 1)
        self.done.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": self.timings[name]}))
        print(f"[demo] {name}: {self.timings[name]:.0f}s", flush=True)

    def train(self, config: str, root: Path, *overrides: str) -> None:
        last = sorted(root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
        resume = ["--ckpt_path", str(last[-1])] if last else []
        if resume:
            print(f"[demo] resuming from {last[-1]}", flush=True)
        self.run("fit", "--config", config, "--trainer.default_root_dir", str(root), *overrides, *resume,
                 module="onetok.scripts.train")

    @staticmethod
    def newest_ckpt(root: Path) -> Path:
        ckpts = sorted(root.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not ckpts:
            raise UserError(f"no checkpoint under {root}")
        last = [p for p in ckpts if p.name == "last.ckpt"]
        return last[-1] if last else ckpts[-1]

    # ---- the steps -------------------------------------------------------------------------------------------------

    def make_data(self) -> None:
        self.run("data", "shapes", "--out", str(self.data), "--train", str(self.train_images),
                 "--val", str(self.val_images), "--force")

    def train_tokenizer(self) -> None:
        extra = ["--trainer.max_steps", "30"] if self.quick else []
        self.train("tokenizer/shapes", self.out / "train_tokenizer",
                   "--data.init_args.train_shards", str(self.data / "train"),
                   "--data.init_args.val_shards", str(self.data / "val"), *extra)
        self.run("export", str(self.newest_ckpt(self.out / "train_tokenizer")), "--out",
                 str(self.models / "tokenizer"), "--force")

    def eval_tokenizer(self) -> None:
        self.run("eval-tokenizer", "--tokenizer", str(self.models / "tokenizer"), "--data", str(self.data / "val"),
                 "--json", str(self.out / "tokenizer_metrics.json"), "--force")

    def tokenize(self) -> None:
        self.run("tokenize", "--tokenizer", str(self.models / "tokenizer"), "--data", str(self.data),
                 "--out", str(self.out / "tokens"), "--force")

    def train_ar(self) -> None:
        extra = ["--trainer.max_steps", "30"] if self.quick else self.ar_time_cap()
        self.train("ar/shapes", self.out / "train_ar",
                   "--data.init_args.tokens", str(self.out / "tokens"),
                   "--model.init_args.tokenizer_dir", str(self.models / "tokenizer"), *extra)
        self.run("export", str(self.newest_ckpt(self.out / "train_ar")), "--out", str(self.models / "unified"),
                 "--force")

    def ar_time_cap(self) -> list[str]:
        """`--trainer.max_time` for the AR training: what `BUDGET_S` leaves after the steps so far and those after
        it (at least a minute). On a fast machine the step budget ends the run before it."""
        left = max(60, int(BUDGET_S - (time.time() - self.started) - AFTER_AR_S))
        print(f"[demo] the AR training may take up to {left} s (the demo's {BUDGET_S // 60}-minute budget)", flush=True)
        return ["--trainer.max_time", f"00:00:{left // 60:02d}:{left % 60:02d}"]

    def sample(self) -> None:
        prompts = self.out / "prompts.txt"
        prompts.write_text("\n".join(DEMO_PROMPTS) + "\n")
        for name, extra in (("samples_plain", []), ("samples_sjd", ["--sjd"])):
            self.run("sample", "--model", str(self.models / "unified"), "--prompts-file", str(prompts), "-n", "2",
                     "--seed", "0", *extra, "--out", str(self.out / name), "--force")

    def eval_ar(self) -> None:
        n = "40" if self.quick else "300"
        self.run("eval-ar", "--model", str(self.models / "unified"), "--data", str(self.data / "val"), "--n", n,
                 "--json", str(self.out / "ar_metrics.json"), "--force")

    def bench_sjd(self) -> None:
        n = "4" if self.quick else "128"
        self.run("bench", "sjd", "--model", str(self.models / "unified"), "--prompts", n,
                 "--threads", "1", "--json", stdout=self.out / "sjd_metrics.json")

    def compression(self) -> None:
        images = self.out / "compress_in"
        if images.exists():
            shutil.rmtree(images)
        images.mkdir(parents=True)
        from onetok.data.shards import iter_samples

        for i, sample in zip(range(8), iter_samples(self.data / "val")):
            sample["image"].save(images / f"val_{i:03d}.png")
        tok = str(self.models / "tokenizer")
        self.run("compress", "--tokenizer", tok, str(images), "-o", str(self.out / "compressed"), "--force")
        self.run("decompress", "--tokenizer", tok, *sorted(str(p) for p in (self.out / "compressed").glob("*.otok")),
                 "-o", str(self.out / "decompressed"), "--force")
        self.run("eval-compression", "--tokenizer", tok, str(images), "--out", str(self.out / "rd"), "--force")

    def photo(self) -> None:
        """The built-in photo codec on the bundled photo: a rate ladder (--bpp) and the RD / equal-bytes report."""
        from onetok.data.images import sample_photo

        folder = self.out / "photo"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "in").mkdir(parents=True)
        shutil.copy(sample_photo(), folder / "in" / sample_photo().name)
        for bpp in PHOTO_LADDER:
            otok = folder / f"coffee_{bpp:g}.otok"
            self.run("compress", str(folder / "in" / sample_photo().name), "--bpp", str(bpp), "-o", str(otok))
            self.run("decompress", str(otok), "-o", str(otok.with_suffix(".png")))
        self.run("eval-compression", str(folder / "in"), "--out", str(folder / "rd"), "--compare-bpp", "0.1",
                 "--quiet")

    def natural(self) -> None:
        """The built-in natural-image model (no training): NATURAL_PER_CLASS samples of every class, and captions
        of NATURAL_CAPTIONS val images per class when the CIFAR-10 val shards are on this machine."""
        from onetok.ar_model.classifier import CIFAR10_LABELS
        from onetok.ar_model.unified import BUILTIN_MODEL as NATURAL_MODEL
        from onetok.demo_report import NATURAL_VAL, write_natural_val

        folder = self.out / "natural"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if not (NATURAL_MODEL / "config.json").is_file():
            (folder / "missing.txt").write_text(f"no built-in natural-image model at {NATURAL_MODEL}\n")
            return
        prompts = folder / "prompts.txt"
        prompts.write_text("".join(f"a photo of a {label}\n" for label in CIFAR10_LABELS))
        self.run("sample", "--model", str(NATURAL_MODEL), "--prompts-file", str(prompts), "-n",
                 str(2 if self.quick else NATURAL_PER_CLASS), "--seed", "0", "--out", str(folder / "samples"))
        val = write_natural_val(NATURAL_VAL, folder / "val", NATURAL_CAPTIONS)
        if val:
            self.run("caption", "--model", str(NATURAL_MODEL), *map(str, val), stdout=folder / "captions.tsv")

    def report(self) -> None:
        from onetok.demo_report import write_report

        write_report(self.out)

    def all(self) -> None:
        start = time.time()
        self.step("data", self.make_data)
        self.step("tokenizer", self.train_tokenizer)
        self.step("eval_tokenizer", self.eval_tokenizer)
        self.step("tokenize", self.tokenize)
        self.step("ar", self.train_ar)
        self.step("sample", self.sample)
        self.step("eval_ar", self.eval_ar)
        self.step("bench_sjd", self.bench_sjd)
        self.step("compression", self.compression)
        self.step("photo", self.photo)
        self.step("natural", self.natural)
        self.step("report", self.report)
        print(f"[demo] finished in {time.time() - start:.0f}s: {self.out / 'report.md'}", flush=True)
