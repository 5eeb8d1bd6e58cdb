"""Sampling from the unified model: logit processing, prefill + KV-cache decode, classifier-free guidance.

Reference: LlamaGen `autoregressive/models/generate.py` (prefill / decode_one_token / top-k, top-p), Ho & Salimans
2022 (classifier-free guidance).

Text -> image rows are `<bos> text <boi>` followed by image codes; the unconditional CFG branch is `<bos> <null>
<boi>`, batched beside the conditional rows (2B rows, left-padded, one forward pass per step). Image -> text rows are
`<bos> <boi> codes <eoi>` followed by text up to `<eos>`. Every sampled distribution goes through
`process_logits` (allowed-token mask, temperature, top-k, top-p, all in float32); speculative Jacobi decoding
(`onetok.ar_model.sjd`) uses the same function, which is what makes it sample the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from onetok.ar_model.model import KVCache, Transformer
from onetok.ar_model.sequence import caption_prompt, image_prompt, unconditional_prompt
from onetok.ar_model.vocab import Vocab
from onetok.sampling_defaults import CFG_SCALE, TEMPERATURE


@dataclass
class SamplingSettings:
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0  # 1 = no guidance (the unconditional branch is skipped)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


# The recommended settings of a model unless it was exported with its own (config.json "sampling"): guided sampling
# at low temperature, the stated defaults of the shapes recipe (docs/benchmarks.md).
DEFAULT_SETTINGS = SamplingSettings(temperature=TEMPERATURE, top_k=None, top_p=None, cfg_scale=CFG_SCALE)


class GenerationResult(NamedTuple):
    codes: torch.Tensor  # (B, k) tokenizer code ids
    forward_passes: int  # model forward calls, prefill included


class TextResult(NamedTuple):
    ids: list[list[int]]  # generated text ids per row, without <eos>
    forward_passes: int


# --------------------------------------------------------------------------------------------------------------------
# Logit processing
# --------------------------------------------------------------------------------------------------------------------


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond) (scale 1 returns `cond` exactly)."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def process_logits(
    logits: torch.Tensor, settings: SamplingSettings, allowed_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """logits (..., V) -> float32 logits (..., V) with -inf on banned ids: mask, temperature, top-k, top-p."""
    x = logits.float()
    if allowed_mask is not None:
        x = x.masked_fill(~allowed_mask.to(x.device), float("-inf"))
    if settings.temperature == 0:
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.argmax(-1, keepdim=True), True)
        return x.masked_fill(~keep, float("-inf"))
    x = x / settings.temperature
    if settings.top_k is not None and settings.top_k < x.shape[-1]:
        kth = x.topk(settings.top_k, dim=-1).values[..., -1:]  # (..., 1)
        x = x.masked_fill(x < kth, float("-inf"))  # ties with the k-th value are kept
    if settings.top_p is not None and settings.top_p < 1:
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely ids
        drop_sorted = mass_before >= settings.top_p  # keep the smallest prefix with mass >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample_from_logits(processed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row from softmax(processed): (..., V) -> (...)."""
    probs = processed.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


# --------------------------------------------------------------------------------------------------------------------
# Prefill and decode
# --------------------------------------------------------------------------------------------------------------------


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ids (B, T) and starts (B,) (the index of each row's first real token)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
    starts = torch.tensor([width - len(s) for s in seqs], dtype=torch.long)
    return ids.to(device), starts.to(device)


def new_cache(model: Transformer, batch: int, max_len: int, starts: torch.Tensor | None = None,
              checked: bool = True) -> KVCache:
    """`model.new_cache`; for a `torch.compile`d model its buffers are marked static (CUDA graphs update them in
    place instead of copying them in and out)."""
    cache = model.new_cache(batch, max_len, starts, checked)
    if hasattr(model, "_orig_mod"):
        cache.mark_static()
    return cache


def prefill(
    model: Transformer, ids: torch.Tensor, starts: torch.Tensor | None = None, max_new: int = 0,
    checked: bool = True,
) -> tuple[torch.Tensor, KVCache]:
    """Run the (left-padded) prompts ids (B, T) into a fresh cache with room for `max_new` more tokens.

    Returns the logits at the last prompt position (B, V) and the cache."""
    cache = new_cache(model, ids.shape[0], ids.shape[1] + max_new, starts, checked)
    logits = model(ids, cache)  # (B, T, V)
    return logits[:, -1], cache


def check_length(model: Transformer, rows: list[list[int]], new_tokens: int) -> None:
    """Raise ValueError unless the longest row plus `new_tokens` fits the model's positions (the decoding loops
    use unchecked caches sized up front, so this is checked once here)."""
    longest = max(len(r) for r in rows) + new_tokens
    if longest > model.config.max_seq_len:
        raise ValueError(f"sequence exceeds max_seq_len {model.config.max_seq_len}: {longest} tokens")


def decode_step(model: Transformer, cache: KVCache, token: torch.Tensor) -> torch.Tensor:
    """Feed one token per row (B,) and return the next-token logits (B, V)."""
    return model(token[:, None], cache)[:, -1]


# --------------------------------------------------------------------------------------------------------------------
# Text -> image and image -> text
# --------------------------------------------------------------------------------------------------------------------


def image_prompts(vocab: Vocab, prompt_ids: list[list[int]], cfg: bool) -> list[list[int]]:
    """`<bos> text <boi>` rows, followed (when `cfg`) by as many `<bos> <null> <boi>` rows."""
    rows = [image_prompt(vocab, p) for p in prompt_ids]
    if cfg:
        rows += [unconditional_prompt(vocab)] * len(prompt_ids)
    return rows


def guided(logits: torch.Tensor, settings: SamplingSettings, cfg: bool) -> torch.Tensor:
    """Combine the conditional and unconditional halves of a 2B-row batch (when `cfg`): (2B, ...) -> (B, ...)."""
    if not cfg:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return cfg_logits(cond, uncond, settings.cfg_scale)


@torch.no_grad()
def generate_image_tokens(
    model: Transformer,
    vocab: Vocab,
    prompt_ids: list[list[int]],
    num_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Sample `num_tokens` image codes after each `<bos> text <boi>` prompt (text ids from `vocab.encode_text`)."""
    cfg = settings.cfg_scale != 1.0
    device = model.output.weight.device
    rows = image_prompts(vocab, prompt_ids, cfg)
    check_length(model, rows, num_tokens)
    ids, starts = left_pad(rows, vocab.pad_id, device)
    mask = vocab.image_mask().to(device)
    logits, cache = prefill(model, ids, starts, max_new=num_tokens, checked=False)  # no host sync per token
    tokens = []
    for step in range(num_tokens):
        token = sample_from_logits(process_logits(guided(logits, settings, cfg), settings, mask), generator)  # (B,)
        tokens.append(token)
        if step + 1 < num_tokens:
            logits = decode_step(model, cache, token.repeat(2) if cfg else token)
    codes = vocab.vocab_to_image(torch.stack(tokens, dim=1))  # (B, k)
    return GenerationResult(codes, forward_passes=num_tokens)


@torch.no_grad()
def generate_text(
    model: Transformer,
    vocab: Vocab,
    codes: torch.Tensor,
    max_len: int,
    settings: SamplingSettings | None = None,
    generator: torch.Generator | None = None,
) -> TextResult:
    """Caption image codes (B, k): `<bos> <boi> codes <eoi>`, then text ids until `<eos>` (greedy by default)."""
    settings = settings or SamplingSettings(temperature=0.0)
    B = codes.shape[0]
    device = model.output.weight.device
    ids = caption_prompt(vocab, codes.to(device))  # (B, k + 3)
    mask = vocab.text_mask().to(device)
    logits, cache = prefill(model, ids, max_new=max_len)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    passes = 1
    for step in range(max_len):
        token = sample_from_logits(process_logits(logits, settings, mask), generator)  # (B,)
        for b in (~done).nonzero().flatten().tolist():
            if int(token[b]) != vocab.eos_id:
                out[b].append(int(token[b]))
        done |= token == vocab.eos_id
        if bool(done.all()) or step + 1 == max_len:
            break
        logits = decode_step(model, cache, token)
        passes += 1
    return TextResult(out, passes)
