"""A folder of samples (`onetok sample`): every prompt's images as numbered PNGs, `samples.jsonl` (one line per image:
its prompt, seed, settings, forward passes and time) and `grid.png` of the first `GRID_IMAGES`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from onetok.ar_model.generate import SamplingSettings
from onetok.fileio import png_info
from onetok.sampling_defaults import SJD_WINDOW

GRID_IMAGES = 64


class SampleRun(NamedTuple):
    """How a folder's images are drawn: `n` per prompt, in batches of at most `batch_size`."""

    n: int
    batch_size: int
    settings: SamplingSettings
    image_tokens: int | None = None  # None: all L
    seed: int = 0
    sjd: bool = False
    window: int = SJD_WINDOW


class SampleSummary(NamedTuple):
    written: int  # images
    forward_passes: int
    seconds: float  # sampling time (device-synchronised)


def batches(prompts: list[str], n: int, size: int, seed: int) -> Iterator[tuple[str, int, int]]:
    """(prompt, seed, count) per batch: each prompt's n images in batches of at most `size`; batch b of prompt i
    draws with seed + i + b * len(prompts), so a run with n <= size uses seed + i."""
    for i, prompt in enumerate(prompts):
        for b, start in enumerate(range(0, n, size)):
            yield prompt, seed + i + b * len(prompts), min(size, n - start)


def save_png(image: torch.Tensor, path: Path) -> None:
    """float (3, S, S) in [0, 1] -> a PNG marked as onetok's."""
    from onetok.data.pixels import to_pil

    to_pil(image[None])[0].save(path, pnginfo=png_info())


def _record(run: SampleRun, image_tokens: int, name: str, prompt: str, seed: int, j: int, count: int, result,
            seconds: float) -> str:
    s = run.settings
    return json.dumps({
        "file": name, "prompt": prompt, "seed": seed, "index_in_batch": j, "batch_size": count,
        "settings": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "cfg": s.cfg_scale,
                     "image_tokens": image_tokens, "sjd": run.sjd, "window": run.window if run.sjd else None},
        "forward_passes": result.forward_passes, "seconds": round(seconds, 4),
    }) + "\n"


def write_samples(model, prompts: list[str], run: SampleRun, folder: Path,
                  on_batch: Callable[[int], object] | None = None) -> SampleSummary:
    """Draw `run.n` images per prompt with the unified `model` into the (new) `folder`; `on_batch(count)` after each
    batch (a progress bar)."""
    from torchvision.utils import make_grid

    from onetok.timing import Stopwatch

    total = run.n * len(prompts)
    digits, image_tokens = max(3, len(str(total - 1))), run.image_tokens or model.tokenizer.num_latent_tokens
    grid, written, passes, seconds = [], 0, 0, 0.0  # the grid keeps the first GRID_IMAGES images only
    with open(folder / "samples.jsonl", "w") as jsonl:
        for prompt, seed, count in batches(prompts, run.n, run.batch_size, run.seed):
            with Stopwatch(model.device) as watch:
                result = model.generate_images([prompt], count, run.settings, run.image_tokens, seed, sjd=run.sjd,
                                               window=run.window)
            for j, image in enumerate(result.images):
                name = f"{written:0{digits}d}.png"
                save_png(image, folder / name)
                jsonl.write(_record(run, image_tokens, name, prompt, seed, j, count, result, watch.seconds))
                if len(grid) < GRID_IMAGES:
                    grid.append(image.cpu())
                written += 1
            passes, seconds = passes + result.forward_passes, seconds + watch.seconds
            if on_batch is not None:
                on_batch(count)
    columns = run.n if len(prompts) > 1 and run.n <= 16 else min(written, 8)
    save_png(make_grid(torch.stack(grid), nrow=columns, padding=2), folder / "grid.png")
    return SampleSummary(written, passes, seconds)
