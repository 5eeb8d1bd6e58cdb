"""Judging the unified model on the shapes data: text -> image attribute accuracy and image -> text exact match.

Text -> image: each val caption is a prompt; the sampled image is read back by the pixel-level parser
(`onetok.data.shapes.parse_image`) and must show exactly the prompted size, color, shape, position and background.
Image -> text: the greedy caption of each val image must equal its true caption. When the val data mark held-out
(color, shape, position) combinations (`json["holdout"]`), both numbers are also reported on those rows alone.

Shared by `onetok eval-ar`, the validation hook of `ARSystem` and the demo.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from onetok.ar_model.generate import DEFAULT_SETTINGS, SamplingSettings, generate_text
from onetok.ar_model.model import Transformer
from onetok.ar_model.unified import UnifiedModel
from onetok.ar_model.vocab import Vocab
from onetok.data.shapes import ATTRIBUTE_NAMES, parse_caption, parse_image
from onetok.timing import Stopwatch


class EvalItems(NamedTuple):
    """Val samples: captions, their codes (N, L) under the model's tokenizer, and held-out flags."""

    captions: list[str]
    codes: torch.Tensor
    holdout: list[bool]


def val_spec(data: str | os.PathLike) -> str:
    """The val shards of a token folder or dataset root (its `val/`), or `data` itself (a shard spec)."""
    root = Path(data)
    if root.is_dir() and (root / "val").is_dir():
        return str(root / "val")
    return str(data)


def load_eval_items(data: str | os.PathLike, n: int, model: UnifiedModel, model_dir: str | os.PathLike | None = None,
                    batch_size: int = 64) -> EvalItems:
    """The first `n` val samples of `data`: token shards (made by the model's tokenizer, checked when `model_dir` is
    given) or image shards (encoded with the model's tokenizer)."""
    from onetok.ar_model.tokenize import encode_samples, is_token_dir, iter_token_samples, read_meta
    from onetok.data.shards import iter_samples
    from onetok.tokenizers.registry import fingerprint

    spec = val_spec(data)
    if is_token_dir(data):
        expected = read_meta(data)["tokenizer"]["fingerprint"]
        if model_dir is not None and fingerprint(model.tokenizer).hex() != expected:
            raise ValueError("token shards made with another tokenizer than the model's")
        pairs = ((s, s["codes"]) for s in iter_token_samples(spec))
    else:
        samples = iter_samples(spec, model.tokenizer.image_size)
        pairs = encode_samples(model.tokenizer, samples, batch_size)
    captions, codes, holdout = [], [], []
    for sample, c in pairs:
        captions.append(sample["caption"] or "")
        codes.append(torch.as_tensor(np.asarray(c), dtype=torch.long))
        holdout.append(bool(sample.get("json", {}).get("holdout", False)))
        if len(captions) >= n:
            break
    if not captions:
        raise ValueError(f"{spec}: no val samples")
    return EvalItems(captions, torch.stack(codes), holdout)


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------


def attribute_scores(prompts: list[str], images: torch.Tensor) -> list[dict[str, bool]]:
    """Per image, which of the prompted attributes the pixel parser reads back: images (B, 3, S, S) in [0, 1]."""
    arrays = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, 3)
    scores = []
    for prompt, array in zip(prompts, arrays):
        want, got = parse_caption(prompt), parse_image(array)
        if want is None:
            raise ValueError(f"not a shapes caption: {prompt!r}")
        scores.append({k: got is not None and got[k] == want[k] for k in ATTRIBUTE_NAMES})
    return scores


def summarize(rows: list[dict[str, bool]]) -> dict:
    """{"n", "exact", "per_attribute": {name: accuracy}} of per-row attribute scores."""
    n = len(rows)
    if n == 0:
        return {"n": 0, "exact": None, "per_attribute": {}}
    exact = sum(all(r.values()) for r in rows) / n
    names = list(rows[0])
    return {"n": n, "exact": exact, "per_attribute": {k: sum(r[k] for r in rows) / n for k in names}}


def with_holdout(rows: list[dict[str, bool]], holdout: list[bool]) -> dict:
    report = summarize(rows)
    if any(holdout):
        report["holdout"] = summarize([r for r, h in zip(rows, holdout) if h])
        report["seen"] = summarize([r for r, h in zip(rows, holdout) if not h])
    return report


def text_to_image(model: UnifiedModel, prompts: list[str], settings: SamplingSettings = DEFAULT_SETTINGS,
                  holdout: list[bool] | None = None, batch_size: int = 100, seed: int = 0,
                  image_tokens: int | None = None, sjd: bool = False,
                  on_images: Callable[[torch.Tensor], None] | None = None) -> dict:
    """One image per prompt (batch b uses seed `seed + b`), judged by the pixel parser; `on_images` also gets each
    batch of samples (B, 3, S, S) in [0, 1] (e.g. for FID)."""
    rows, passes, seconds = [], 0, 0.0
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        with Stopwatch(model.device) as watch:
            out = model.generate_images(chunk, settings=settings, image_tokens=image_tokens, seed=seed + b, sjd=sjd)
        if on_images is not None:
            on_images(out.images)
        rows += attribute_scores(chunk, out.images)
        passes, seconds = passes + out.forward_passes, seconds + watch.seconds
    report = with_holdout(rows, holdout or [False] * len(prompts))
    report.update(forward_passes=passes, seconds=round(seconds, 3))
    return report


@torch.no_grad()
def caption_codes(transformer: Transformer, vocab: Vocab, codes: torch.Tensor, batch_size: int = 100,
                  max_len: int = 64) -> list[str]:
    """Greedy captions of image codes (N, L)."""
    max_len = max(1, min(max_len, transformer.config.max_seq_len - codes.shape[1] - 3))
    greedy = SamplingSettings(temperature=0.0)
    device = transformer.output.weight.device
    captions = []
    for start in range(0, len(codes), batch_size):
        result = generate_text(transformer, vocab, codes[start : start + batch_size].to(device), max_len, greedy)
        captions += [vocab.decode_text(ids) for ids in result.ids]
    return captions


def image_to_text(model: UnifiedModel, codes: torch.Tensor, truths: list[str], holdout: list[bool] | None = None,
                  batch_size: int = 100) -> dict:
    """Exact-match accuracy of greedy captions (plus per-attribute accuracy of the parsed captions)."""
    predicted = caption_codes(model.transformer, model.vocab, codes, batch_size)
    rows = []
    for pred, truth in zip(predicted, truths):
        got, want = parse_caption(pred), parse_caption(truth)
        row = {"caption": pred.strip() == truth.strip()}
        if want is not None:
            row.update({k: got is not None and got[k] == want[k] for k in ATTRIBUTE_NAMES})
        rows.append(row)
    report = with_holdout(rows, holdout or [False] * len(truths))
    report["examples"] = [{"predicted": p, "truth": t} for p, t in list(zip(predicted, truths))[:8]]
    return report


def evaluate(model: UnifiedModel, items: EvalItems, settings: SamplingSettings = DEFAULT_SETTINGS,
             batch_size: int = 100, seed: int = 0, image_tokens: int | None = None,
             on_images: Callable[[torch.Tensor], None] | None = None) -> dict:
    """Both directions on the same val items: {"text_to_image": ..., "image_to_text": ..., "settings": ...}."""
    return {
        "text_to_image": text_to_image(model, items.captions, settings, items.holdout, batch_size, seed, image_tokens,
                                       on_images=on_images),
        "image_to_text": image_to_text(model, items.codes, items.captions, items.holdout, batch_size),
        "settings": {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
                     "cfg": settings.cfg_scale, "seed": seed, "image_tokens": image_tokens},
    }
