"""Speculative Jacobi Decoding (SJD): lossless parallel sampling of image tokens.

Reference: Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with Training-free Speculative
Jacobi Decoding", ICLR 2025 (tyshiwo1/Accelerating-T2I-AR-with-SJD, `scheduler/jacobi_iteration_lumina_mgpt.py`).
See docs/sjd.md for the algorithm and why it samples exactly the distribution of `generate_image_tokens`.

One pass per iteration: the input is each row's last accepted token (in the first pass: the prompt itself, so there
is no separate prefill pass; its drafts are uniform) followed by a window of w draft tokens, and the w + 1 output
logits are the target distributions at the w draft positions and the one after them. After
guidance and `process_logits` (the same as plain sampling), `onetok.kernels.sjd_verify` accepts a prefix of
n drafts (draft x_i with probability min(1, p_i(x_i) / q_i(x_i))) and draws one more token, from
norm(max(0, p_n - q_n)) after a rejection or from p_w when all were accepted: n + 1 >= 1 tokens per pass.
Each row's KV cache is cut back to its accepted prefix; the positions after the new token are re-drafted from
this pass's predictions there (carry-over, their q the predicted distributions) and the window is refilled.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from onetok.ar_model.generate import (
    SamplingSettings,
    guided,
    image_prompts,
    left_pad,
    process_logits,
    sample_from_logits,
)
from onetok.ar_model.model import Transformer
from onetok.ar_model.vocab import Vocab
from onetok.kernels import sjd_verify

DRAFT_INITS = ("uniform", "prev")


class SJDResult(NamedTuple):
    codes: torch.Tensor  # (B, k) tokenizer code ids
    forward_passes: int  # every model call (the first one also reads the prompts)
    tokens_per_pass: list[int]  # new tokens each unfinished row gained in each verify pass (for histograms)


class Drafts(NamedTuple):
    ids: torch.Tensor  # (B, W) code ids of the drafts after each row's last accepted token
    probs: torch.Tensor  # (B, W, K) the distribution each draft was drawn from


# --------------------------------------------------------------------------------------------------------------------
# Drafting
# --------------------------------------------------------------------------------------------------------------------


def uniform_drafts(
    batch: int, codes: int, window: int, device: torch.device, generator: torch.Generator | None
) -> Drafts:
    """(B, W) drafts drawn uniformly over the K codes, q = 1/K."""
    ids = torch.randint(0, codes, (batch, window), generator=generator, device=device)
    return Drafts(ids, torch.full((batch, window, codes), 1.0 / codes, device=device))


def fresh_drafts(
    processed: torch.Tensor, window: int, init: str, generator: torch.Generator | None
) -> Drafts:
    """New drafts (B, W) for positions with no prediction yet: uniform over the K codes, or ("prev") drawn from
    the latest predicted distribution of the row, processed (B, K)."""
    B, K = processed.shape
    if init == "uniform":
        return uniform_drafts(B, K, window, processed.device, generator)
    latest = processed[:, None].expand(B, window, K)  # (B, W, K)
    return Drafts(sample_from_logits(latest, generator), latest.softmax(-1))


def carry_over(
    processed: torch.Tensor, accept_len: torch.Tensor, window: int, init: str, generator: torch.Generator | None
) -> Drafts:
    """Drafts for the next pass from this pass's processed logits (B, w+1, K).

    The new last token sits at window position n (0-based over the w+1 outputs); positions n+1..w already have
    predictions from this pass, so their drafts are drawn from them; the rest of the W-long window is fresh."""
    B, w1, K = processed.shape
    predicted = sample_from_logits(processed, generator)  # (B, w+1)
    fresh = fresh_drafts(processed[:, -1], window, init, generator)
    source = accept_len[:, None] + 1 + torch.arange(window, device=processed.device)  # (B, W) output index
    carried = source < w1
    source = source.clamp(max=w1 - 1)
    ids = torch.where(carried, predicted.gather(1, source), fresh.ids)
    probs = processed.softmax(-1).gather(1, source[..., None].expand(B, window, K))  # (B, W, K)
    return Drafts(ids, torch.where(carried[..., None], probs, fresh.probs))


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_image_tokens_sjd(
    model: Transformer,
    vocab: Vocab,
    prompt_ids: list[list[int]],
    num_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    window: int = 16,
    init: str = "uniform",
    backend: str = "auto",
) -> SJDResult:
    """Sample `num_tokens` image codes after each `<bos> text <boi>` prompt with SJD; same law as plain sampling."""
    if window < 1 or init not in DRAFT_INITS:
        raise ValueError(f"SJD needs window >= 1 and init in {DRAFT_INITS}, got {window}, {init!r}")
    cfg = settings.cfg_scale != 1.0
    reps = 2 if cfg else 1  # model rows per prompt: conditional (+ unconditional)
    device = model.output.weight.device
    B, k = len(prompt_ids), num_tokens

    def target(raw: torch.Tensor) -> torch.Tensor:  # model logits (B or 2B, ..., V) -> processed (B, ..., K)
        return process_logits(guided(raw, settings, cfg)[..., vocab.image_offset :], settings)

    ids, starts = left_pad(image_prompts(vocab, prompt_ids, cfg), vocab.pad_id, device)
    cache = model.new_cache(ids.shape[0], ids.shape[1] + k + window + 1, starts)
    codes = torch.zeros(B, k, dtype=torch.long, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)  # accepted tokens per row
    # pass 1 runs the prompts and a window of uniform drafts together: no separate prefill pass
    drafts = uniform_drafts(B, vocab.codebook_size, window, device, generator)
    passes, tokens_per_pass = 0, []
    while True:
        remaining = k - count  # (B,)
        active = remaining > 0
        if not bool(active.any()):
            break
        w = min(window, int(remaining.max()) - 1)  # never draft past the k-th token
        if passes == 0:
            head, before = ids, cache.lengths.clone()  # (B', T) prompts into the empty cache
        else:  # each row's last accepted token; finished rows are reset
            head = vocab.image_to_vocab(codes.gather(1, (count - 1)[:, None])).repeat(reps, 1)  # (B', 1)
            before = torch.where(active.repeat(reps), cache.lengths, cache.starts)
            cache.rollback(before)
        window_ids = vocab.image_to_vocab(drafts.ids[:, :w])  # (B, w)
        inputs = torch.cat([head, window_ids.repeat(reps, 1)], dim=1)
        processed = target(model(inputs, cache)[:, -(w + 1) :])  # (B, w+1, K)
        passes += 1
        u_accept = torch.rand(B, w, generator=generator, device=device)
        u_sample = torch.rand(B, generator=generator, device=device)
        n, token = sjd_verify(processed, drafts.ids[:, :w], drafts.probs[:, :w], u_accept, u_sample, backend)
        # the new tokens are drafts[:n] then `token`; keep those that fit in k
        new = torch.cat([drafts.ids[:, :w], token[:, None]], dim=1).scatter(1, n[:, None], token[:, None])
        gained = torch.minimum(n + 1, remaining).clamp(min=0)  # (B,)
        rows, j = (torch.arange(w + 1, device=device) < gained[:, None]).nonzero(as_tuple=True)
        codes[rows, count[rows] + j] = new[rows, j]
        tokens_per_pass += gained[active].tolist()
        count = count + gained
        cache.rollback(before + head.shape[1] + n.repeat(reps))  # head + accepted drafts stay cached
        drafts = carry_over(processed, n, window, init, generator)
    return SJDResult(codes, passes, tokens_per_pass)
