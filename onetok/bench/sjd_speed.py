"""`onetok bench sjd`: speculative Jacobi decoding vs plain sampling, same prompts, seeds and settings.

Reports forward passes per image and wall-clock seconds per image for both, their ratios (plain / SJD), and the
histogram of tokens gained per SJD verify pass. Prompts: `--prompts-file` (one per line), else val-style shapes
captions drawn with `--seed` (for models trained on `onetok data shapes`). `--profile` adds, for one batch, the
operators per forward pass (torch.profiler; a proxy for kernel launches on a GPU) and the host syncs per pass
(`count_host_syncs`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from onetok.bench import defaults
from onetok.fileio import UserError

# aten ops that make the host wait for the device on CUDA (a value or a data-dependent shape comes back)
SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim",
                      "_unique", "_unique2", "unique_consecutive", "repeat_interleave"})
SYNC_METHODS = ("tolist", "cpu", "numpy")  # Tensor methods that copy to the host (not seen by a dispatch mode on CPU)


@contextlib.contextmanager
def count_host_syncs():
    """Yield a Counter of the host syncs made inside the block, by op name, on any device (a CPU run shows where a
    CUDA run would wait): item/bool/int of a tensor, nonzero, boolean-mask indexing, tensor-repeat
    repeat_interleave, unique, and `Tensor.tolist/cpu/numpy` calls from Python."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counter: Counter = Counter()

    def bool_index(args) -> bool:
        indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
        return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in indices)

    class SyncCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name == "repeat_interleave":  # only repeats given as a tensor, without output_size, sync
                synced = func._overloadname == "Tensor" and (kwargs or {}).get("output_size") is None
            else:
                synced = name in SYNC_OPS or (name.startswith("index") and bool_index(args))
            if synced:
                counter[name] += 1
            return func(*args, **(kwargs or {}))

    originals = {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS}

    def counted(name, method):
        def call(self, *args, **kwargs):
            counter[name] += 1
            return method(self, *args, **kwargs)
        return call

    for name in SYNC_METHODS:
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    try:
        with SyncCounter():
            yield counter
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


@dataclass
class SjdOptions:
    """What `onetok bench sjd` decodes and how (the sampling settings come separately)."""

    model: str  # a unified model folder
    device: str = "cpu"
    prompts: int = defaults.SJD_PROMPTS
    prompts_file: str | None = None  # one prompt per line; None: shapes captions drawn with `seed`
    window: int | None = None  # None: the library's SJD window
    init: str = "uniform"
    batch: int = defaults.SJD_BATCH
    image_tokens: int | None = None
    seed: int = 0
    dtype: str = "fp32"
    compile: bool = False
    profile: bool = False


def load_prompts(args: SjdOptions) -> list[str]:
    if args.prompts < 1:
        raise UserError(f"--prompts must be >= 1, got {args.prompts}")
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise UserError(f"{path}: no prompts")
        return lines[: args.prompts]
    import numpy as np

    from onetok.data.shapes import all_combos, caption_of, sample_attributes

    rng = np.random.default_rng(args.seed)
    return [caption_of(sample_attributes(rng, all_combos())) for _ in range(args.prompts)]


def measure(model, prompts: list[str], args, settings, sjd: bool) -> dict:
    """Decode `prompts` in batches of `args.batch` (an `SjdOptions`), one seed per batch; passes and seconds per
    image."""
    from onetok.timing import Stopwatch

    passes, seconds, per_pass = [], 0.0, []
    for i in range(0, len(prompts), args.batch):
        with Stopwatch(model.device) as watch:
            out = model.generate_images(prompts[i : i + args.batch], settings=settings, image_tokens=args.image_tokens,
                                        seed=args.seed + i, sjd=sjd, window=args.window, init=args.init)
        passes.append(out.forward_passes)
        seconds += watch.seconds
        per_pass += out.tokens_per_pass or []
    result = {"forward_passes_per_image": sum(passes) / len(passes), "seconds_per_image": seconds / len(prompts)}
    if sjd:
        result["tokens_per_pass_histogram"] = {str(n): c for n, c in sorted(Counter(per_pass).items())}
        result["mean_tokens_per_pass"] = sum(per_pass) / max(1, len(per_pass))
    return result


def pass_profile(model, prompts: list[str], args, settings, sjd: bool) -> dict:
    """Operators (leaf aten ops, torch.profiler) and host syncs per forward pass, sampling the codes of `prompts`
    once (no image decoding)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from onetok.ar_model.generate import generate_image_tokens
    from onetok.ar_model.sjd import generate_image_tokens_sjd

    prompt_ids = [model.vocab.encode_text(p) for p in prompts]
    k = args.image_tokens or model.tokenizer.num_latent_tokens

    def sample() -> int:
        generator = torch.Generator(model.device).manual_seed(args.seed)
        if sjd:
            return generate_image_tokens_sjd(model.transformer, model.vocab, prompt_ids, k, settings, generator,
                                             window=args.window, init=args.init).forward_passes
        return generate_image_tokens(model.transformer, model.vocab, prompt_ids, k, settings, generator).forward_passes

    with count_host_syncs() as syncs:
        passes = sample()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sample()
    ops = sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children)
    return {"forward_passes": passes, "ops_per_pass": round(ops / passes, 1),
            "host_syncs_per_pass": round(sum(syncs.values()) / passes, 2)}


def load_model(args: SjdOptions):
    import torch

    from onetok.ar_model.unified import UnifiedModel

    model = UnifiedModel.from_pretrained(args.model, map_location=args.device)
    if args.dtype == "bf16":
        model.transformer.to(torch.bfloat16)
        model.tokenizer.inference_dtype = torch.bfloat16
    if args.compile:
        model.transformer = torch.compile(model.transformer, mode="reduce-overhead", dynamic=False)
    return model


def _sample_both(model, prompts: list[str], args: SjdOptions, settings) -> dict:
    """Warm-up (and compilation) of both, then plain and SJD measured, and the per-pass profile when asked."""
    for sjd in (False, True):
        model.generate_images(prompts[: args.batch], settings=settings, image_tokens=args.image_tokens, sjd=sjd,
                              window=args.window, init=args.init)
    out = {"plain": measure(model, prompts, args, settings, sjd=False),
           "sjd": measure(model, prompts, args, settings, sjd=True)}
    if args.profile:
        out["profile"] = {name: pass_profile(model, prompts[: args.batch], args, settings, sjd=name == "sjd")
                          for name in ("plain", "sjd")}
    return out


def sjd_report(args: SjdOptions, settings_for: Callable) -> dict:
    """Plain sampling vs SJD on the same prompts, seeds and settings (`settings_for(model.settings)`: the run's
    sampling settings given the model's recommended ones)."""
    import torch

    from onetok.ar_model.unified import UnifiedModel

    if args.window is None:  # the library's default window, reported as used
        args = replace(args, window=inspect.signature(UnifiedModel.generate_images).parameters["window"].default)
    if args.window < 1 or args.batch < 1:
        raise UserError("--window and --batch must be >= 1")
    model = load_model(args)
    settings = settings_for(model.settings)
    prompts = load_prompts(args)
    try:
        runs = _sample_both(model, prompts, args, settings)
    except ValueError as err:  # unknown words, too many image tokens, ...
        hint = "" if args.prompts_file else " (models not trained on shapes captions need --prompts-file)"
        raise UserError(f"{args.model}: {err}{hint}") from None
    plain, sjd = runs["plain"], runs["sjd"]
    report = {"model": str(args.model), "device": str(model.device), "threads": torch.get_num_threads(),
              "prompts": len(prompts), "batch": args.batch,
              "image_tokens": args.image_tokens or model.tokenizer.num_latent_tokens, "window": args.window,
              "init": args.init, "dtype": args.dtype, "compiled": args.compile, "settings": vars(settings),
              "plain": plain, "sjd": sjd,
              "forward_pass_ratio": plain["forward_passes_per_image"] / sjd["forward_passes_per_image"],
              "wall_clock_ratio": plain["seconds_per_image"] / sjd["seconds_per_image"]}
    if "profile" in runs:
        report["profile"] = runs["profile"]
    return report


def format_report(r: dict) -> str:
    lines = [
        f"model {r['model']} on {r['device']} ({r['threads']} threads): {r['prompts']} prompts, batch {r['batch']}",
        f"{r['image_tokens']} image tokens, window {r['window']} ({r['init']} drafts), "
        f"{r['dtype']}{', compiled' if r['compiled'] else ''}, settings {r['settings']}",
        f"{'':8}{'passes/image':>14}{'s/image':>12}",
        f"{'plain':8}{r['plain']['forward_passes_per_image']:>14.2f}{r['plain']['seconds_per_image']:>12.4f}",
        f"{'sjd':8}{r['sjd']['forward_passes_per_image']:>14.2f}{r['sjd']['seconds_per_image']:>12.4f}",
        f"{'ratio':8}{r['forward_pass_ratio']:>14.2f}{r['wall_clock_ratio']:>12.2f}   (plain / sjd)",
        f"tokens gained per SJD pass (mean {r['sjd']['mean_tokens_per_pass']:.2f}):",
    ]
    hist = r["sjd"]["tokens_per_pass_histogram"]
    top = max(hist.values(), default=1)
    lines += [f"{n:>4} {c:>7}  {'#' * max(1, round(40 * c / top))}" for n, c in hist.items()]
    for name, p in r.get("profile", {}).items():
        lines.append(f"{name}: {p['ops_per_pass']} operators and {p['host_syncs_per_pass']} host syncs per forward pass "
                     f"({p['forward_passes']} passes, one batch)")
    return "\n".join(lines)
