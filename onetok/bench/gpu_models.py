"""The model sections of the GPU check (`onetok.bench.gpu_check`): sampling plain vs SJD, training step rates, and
tokenizer throughput.

Only high-level entry points are called, each in one place: `UnifiedModel.generate_images` (`generate`), the
Lightning systems `ARSystem` / `TokenizerSystem` with their YAML init arguments (`_fit`), and the public data
helpers of `onetok.ar_model.data`. Models are random-weight presets, or the `shapes` AR model trained here for a
minute (its tokenizer keeps random weights: the codes are still a deterministic function of the image, which is
all the AR model needs to become confident, i.e. to give SJD a realistic acceptance rate).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from onetok import ar_model
from onetok.ar_model.generate import DEFAULT_SETTINGS
from onetok.ar_model.model import Transformer, config_from_preset
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab, WordText
from onetok.data.pixels import from_hwc
from onetok.data.shapes import all_combos, caption_of, render, sample_attributes
from onetok.timing import Stopwatch
from onetok.tokenizers.model import Tokenizer, preset

MODES = (("plain", False), ("sjd", True))  # (name, sjd)


class Timed(NamedTuple):
    seconds: float
    forward_passes: int
    tokens_per_pass: list[int] | None


def generate(model: UnifiedModel, prompts: list[str], sjd: bool, seed: int) -> Timed:
    """The one call into sampling: its wall clock, forward passes and SJD tokens per pass."""
    with Stopwatch(model.device) as watch:
        out = model.generate_images(prompts, settings=DEFAULT_SETTINGS, seed=seed, sjd=sjd)
    return Timed(watch.seconds, out.forward_passes, out.tokens_per_pass)


def shapes_captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    combos = all_combos()
    return [caption_of(sample_attributes(rng, combos)) for _ in range(n)]


def sample_rates(ctx, model: UnifiedModel, batches: tuple[int, ...], repeats: int,
                 captions: list[str] | None = None) -> dict:
    """Plain vs SJD per batch size: best-of-`repeats` wall clock, passes, tokens per SJD pass. Prompts: `captions`
    cycled (default: shapes captions)."""
    prompts = [captions[i % len(captions)] for i in range(max(batches))] if captions else shapes_captions(max(batches))
    if model.vocab.text.kind == "words":  # a model with its own word list: prompts of its first words
        try:
            model.vocab.encode_text(prompts[0])
        except ValueError:
            prompts = [" ".join(model.vocab.text.words[:6])] * max(batches)
    for _, sjd in MODES:  # warm-up: Triton compilation and autotuning, cuBLAS handles
        generate(model, prompts[:1], sjd, seed=0)
    rows, stopped = [], None
    for batch in batches:
        for name, sjd in MODES:
            if ctx.left() < 20:
                stopped = f"deadline: stopped before batch {batch} {name}"
                break
            runs = [generate(model, prompts[:batch], sjd, seed=1 + r) for r in range(repeats)]
            best = min(runs, key=lambda out: out.seconds)
            per_pass = [n for out in runs for n in (out.tokens_per_pass or [])]
            rows.append({"batch": batch, "mode": name, "seconds": best.seconds, "seconds_all": [out.seconds for out in runs],
                         "seconds_per_image": best.seconds / batch, "forward_passes": best.forward_passes,
                         "mean_tokens_per_pass": sum(per_pass) / len(per_pass) if per_pass else None})
    plain = {r["batch"]: r["seconds"] for r in rows if r["mode"] == "plain"}
    for row in rows:
        row["plain_over_this"] = plain[row["batch"]] / row["seconds"] if row["batch"] in plain else None
    return {"image_tokens": model.tokenizer.num_latent_tokens, "settings": vars(DEFAULT_SETTINGS),
            "dtype": str(next(model.transformer.parameters()).dtype), "rows": rows, "stopped": stopped}


def sampling_random(ctx) -> dict:
    """Random-weight AR `base` with a 256-token TiTok-S-sized tokenizer (dry run: the `tiny` presets)."""
    tok_config = preset("tiny") if ctx.dry_run else preset("titok-s-128", num_latent_tokens=256)
    tokenizer = Tokenizer(tok_config)
    vocab = Vocab(tokenizer.codebook_size)  # UTF-8 byte text
    transformer = Transformer(config_from_preset("tiny" if ctx.dry_run else "base", vocab.size))
    model = UnifiedModel(transformer, vocab, tokenizer).to(ctx.device)
    params = sum(p.numel() for p in transformer.parameters())
    result = sample_rates(ctx, model, (1, 2) if ctx.dry_run else (1, 16), repeats=1 if ctx.dry_run else 2)
    return {"model": f"AR {'tiny' if ctx.dry_run else 'base'} ({params / 1e6:.1f} M parameters), random weights",
            **result}


# ---------------------------------------------------------------------------------------------------------------
# Training (Lightning)
# ---------------------------------------------------------------------------------------------------------------


def _batch_timer(ctx, warmup: int):
    """A callback recording the (synchronised) end time of every training batch."""
    import lightning.pytorch as pl

    class BatchTimer(pl.Callback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ctx.sync()
            self.ends.append(time.perf_counter())

        def rate(self) -> float | None:
            timed = self.ends[warmup:]
            return (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else None

    return BatchTimer()


def _fit(ctx, system, loader, precision: str, callbacks=(), max_steps: int = -1, max_seconds: float | None = None):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="gpu" if ctx.device == "cuda" else "cpu", devices=1, precision=precision,
                        max_epochs=1 if max_steps < 0 else -1, max_steps=max_steps,
                        max_time={"seconds": max_seconds} if max_seconds else None, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
                        default_root_dir=str(ctx.scratch / "lightning"))
    trainer.fit(system, loader)
    return trainer


def _init_args(config: str) -> dict:
    """The model's init arguments of a config shipped with onetok, e.g. "ar/base_256" (the checkout's configs/, or
    an install's onetok/configs/)."""
    import yaml

    from onetok.train_checks import shipped_configs

    return dict(yaml.safe_load(shipped_configs()[config].read_text())["model"]["init_args"])


def _precision(ctx) -> str:
    return "bf16-mixed"  # on CPU too (torch.autocast on CPU): the dry run exercises the same setting


class _Fixed(torch.utils.data.Dataset):
    """`length` copies of one item (no data cost inside the timed steps)."""

    def __init__(self, item, length: int):
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        return self.item


def _synthetic_rows(vocab: Vocab, rows: int, codes: int, text_bytes: int, seed: int = 0) -> list:
    """Training rows (t2i and i2t) from random codes and random caption bytes."""
    import random

    from onetok.ar_model.sequence import Row, SequenceBuilder

    rng, builder = random.Random(seed), SequenceBuilder(vocab)
    text = [vocab.text_offset + rng.randrange(vocab.text.size) for _ in range(text_bytes)]
    return [Row(builder(text, [rng.randrange(vocab.codebook_size) for _ in range(codes)], rng), f"row{i}")
            for i in range(rows)]


def train_rates(ctx) -> dict:
    """bf16-mixed steps/s of the TiTok-S-128 tokenizer (configs/tokenizer/titok_s128.yaml) and the AR `base`
    (configs/ar/base_256.yaml) at their configs' batch sizes, after warm-up batches (dry run: `tiny` presets)."""
    from onetok.ar_model.data import Collate
    from onetok.ar_model.system import ARSystem
    from onetok.tokenizers.system import TokenizerSystem

    warmup, timed = (1, 2) if ctx.dry_run else (3, 12)
    previous_precision = torch.get_float32_matmul_precision()
    results = {}
    try:
        args = _init_args("tokenizer/titok_s128")
        if ctx.dry_run:
            args["preset"] = "tiny"
        system = TokenizerSystem(**args)
        size, batch = system.model.image_size, 4 if ctx.dry_run else 32
        loader = DataLoader(_Fixed({"image": torch.rand(3, size, size)}, batch * (warmup + timed)), batch_size=batch)
        timer = _batch_timer(ctx, warmup)
        _fit(ctx, system, loader, _precision(ctx), callbacks=[timer])
        results["tokenizer"] = {"config": f"titok_s128.yaml (preset {args['preset']})", "batch": batch,
                                "image_size": size, "steps_per_s": timer.rate(), "precision": _precision(ctx)}
        del system, loader
        args = {k: v for k, v in _init_args("ar/base_256").items() if k != "tokenizer_dir"}
        if ctx.dry_run:
            args["preset"] = "tiny"
        vocab = Vocab(64 if ctx.dry_run else 4096)
        codes, text_bytes, batch = (8, 20, 4) if ctx.dry_run else (128, 64, 64)  # 128 = TiTok-S-128's L
        system = ARSystem(**args, vocab=vocab.to_dict())
        rows = _synthetic_rows(vocab, batch * (warmup + timed), codes, text_bytes)
        loader = DataLoader(rows, batch_size=batch, collate_fn=Collate(vocab.pad_id))
        timer = _batch_timer(ctx, warmup)
        _fit(ctx, system, loader, _precision(ctx), callbacks=[timer])
        results["ar"] = {"config": f"base_256.yaml (preset {args['preset']})", "batch": batch,
                         "tokens_per_row": codes + text_bytes + 4, "steps_per_s": timer.rate(),
                         "precision": _precision(ctx)}
    finally:
        torch.set_float32_matmul_precision(previous_precision)  # TokenizerSystem sets "high" for the process
    return results


def shapes_tokenizer_config():
    """The `shapes` tokenizer preset: FSQ from vector-quantize-pytorch, or (absent, as on the GPU image) our VQ."""
    if importlib.util.find_spec("vector_quantize_pytorch") is not None:
        return preset("shapes")
    return preset("shapes", quantizer="vq", code_dim=8, codebook_size=512)


def train_shapes_model(ctx, max_seconds: float) -> tuple[UnifiedModel, dict]:
    """The `shapes` AR model trained for up to `max_seconds` on shapes images coded by a random-weight shapes
    tokenizer (FSQ when vector-quantize-pytorch imports, else the same preset with our VQ)."""
    from onetok.ar_model.data import Collate, SequenceBuilder, TextEncoder, TokenPairs, TrainSequences
    from onetok.ar_model.system import ARSystem

    tok_config = shapes_tokenizer_config()
    torch.manual_seed(0)
    tokenizer = Tokenizer(tok_config).to(ctx.device).eval()
    count = 32 if ctx.dry_run else 4000
    rng = np.random.default_rng(0)
    attributes = [sample_attributes(rng, all_combos()) for _ in range(count)]
    captions = [caption_of(a) for a in attributes]
    images = from_hwc([np.asarray(render(a, tok_config.image_size)) for a in attributes])  # (count, 3, S, S)
    codes = torch.cat([tokenizer.encode(chunk.to(ctx.device)).cpu() for chunk in images.split(500)])  # (count, L)
    vocab = Vocab(tokenizer.codebook_size, WordText.from_captions(captions))
    pairs = TokenPairs(codes, captions, attributes, [f"shape{i}" for i in range(count)])
    data = TrainSequences(pairs, TextEncoder(vocab), SequenceBuilder(vocab))
    loader = DataLoader(data, batch_size=8 if ctx.dry_run else 64, shuffle=True, drop_last=True,
                        collate_fn=Collate(vocab.pad_id))
    system = ARSystem(preset="shapes", vocab=vocab.to_dict(), eval_samples=0, warmup_steps=5 if ctx.dry_run else 100)
    trainer = _fit(ctx, system, loader, _precision(ctx), max_steps=5 if ctx.dry_run else 20000,
                   max_seconds=max_seconds)
    loss = trainer.callback_metrics.get("train/loss")
    info = {"tokenizer": f"shapes preset, {tok_config.quantizer} (random weights)", "images": count,
            "steps": trainer.global_step, "final_train_loss": None if loss is None else float(loss)}
    return UnifiedModel(system.transformer, vocab, tokenizer.cpu()).to(ctx.device), info


def sampling_trained(ctx) -> dict:
    """Plain vs SJD on a trained model: `--model DIR`, else the `shapes` model trained here."""
    if ctx.model_dir:
        model, info = UnifiedModel.from_pretrained(ctx.model_dir, map_location=ctx.device), {"model": ctx.model_dir}
    else:
        model, info = train_shapes_model(ctx, max_seconds=10 if ctx.dry_run else max(5.0, min(45.0, ctx.left() - 150)))
    batches = (1, 2) if ctx.dry_run else (1, 16)
    return {**info, **sample_rates(ctx, model, batches, repeats=1 if ctx.dry_run else 3)}


def tokenizer_speed(ctx) -> dict:
    """Encode/decode images/s of the TiTok-S-128 preset (random weights) in bf16 autocast, the default on CUDA, and
    in fp32, with the time per stage (`onetok bench tokenizer`'s measurement)."""
    from onetok.bench.tokenizer_speed import bench_device

    name, batch, rounds = ("tiny", 4, 2) if ctx.dry_run else ("titok-s-128", 64, 10)
    return {"rows": [bench_device(name, ctx.device, dtype, batch, rounds) for dtype in ("bf16", "fp32")]}


# ---------------------------------------------------------------------------------------------------------------
# The built-in natural-image unified model
# ---------------------------------------------------------------------------------------------------------------

NATURAL_MODEL_DIR = Path(ar_model.__file__).parent / "pretrained" / "cifar10"  # the built-in natural-image model's folder
NATURAL_PROMPTS = [f"a photo of {'an' if c[0] in 'aeiou' else 'a'} {c}" for c in  # its image -> text captions
                   ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]


def ar_train_rate(ctx, model: UnifiedModel, batch: int) -> dict:
    """bf16-mixed Lightning training steps/s of `model`'s transformer config (fresh weights) on synthetic rows of
    its own length (L image codes + 16 text tokens), after warm-up batches."""
    import dataclasses

    from onetok.ar_model.data import Collate
    from onetok.ar_model.system import ARSystem

    warmup, timed = (1, 2) if ctx.dry_run else (3, 12)
    system = ARSystem(vocab=model.vocab.to_dict(), model_config=dataclasses.asdict(model.transformer.config),
                      eval_samples=0)
    codes = model.tokenizer.num_latent_tokens
    rows = _synthetic_rows(model.vocab, batch * (warmup + timed), codes, text_bytes=16)
    loader = DataLoader(rows, batch_size=batch, collate_fn=Collate(model.vocab.pad_id))
    timer = _batch_timer(ctx, warmup)
    _fit(ctx, system, loader, _precision(ctx), callbacks=[timer])
    return {"batch": batch, "tokens_per_row": codes + 16 + 4, "steps_per_s": timer.rate(),
            "precision": _precision(ctx)}


def natural_model(ctx) -> dict:
    """The built-in natural-image unified model (`--natural-model DIR`, default `NATURAL_MODEL_DIR`): training
    steps/s of its config, and sampling images/s at batch 1, 16 and 256, plain vs SJD. Skipped without the folder."""
    folder = Path(ctx.shared.get("natural_model") or NATURAL_MODEL_DIR)
    if not (folder / "config.json").is_file():
        return {"skip_reason": f"no unified model folder at {folder} (the built-in natural-image model; "
                               "--natural-model DIR names another)"}
    model = UnifiedModel.from_pretrained(folder, map_location=ctx.device)
    params = sum(p.numel() for p in model.transformer.parameters())
    sampling = sample_rates(ctx, model, (1, 2) if ctx.dry_run else (1, 16, 256), repeats=1 if ctx.dry_run else 2,
                            captions=NATURAL_PROMPTS)
    for row in sampling["rows"]:
        row["images_per_s"] = row["batch"] / row["seconds"]
    train = ar_train_rate(ctx, model, batch=4 if ctx.dry_run else 64) if ctx.left() > 40 else None
    return {"model": f"{folder} ({params / 1e6:.1f} M parameters)", "train": train, **sampling}
