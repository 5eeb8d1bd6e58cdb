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

A pass waits on the device once (the GPU path: docs/sjd.md), to learn how many codes the prompts still need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import repeat

from onetok.ar_model.generate import (
    SamplingSettings,
    check_length,
    guided,
    image_prompts,
    left_pad,
    new_cache,
    process_logits,
    sample_from_logits,
)
from onetok.ar_model.model import KVCache, Transformer
from onetok.ar_model.vocab import Vocab
from onetok.kernels import SJDVerifyResult, sjd_verify
from onetok.sampling_defaults import SJD_WINDOW

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


def verify_pass(
    processed: torch.Tensor, drafts: Drafts, generator: torch.Generator | None, backend: str
) -> SJDVerifyResult:
    """Draw the uniforms and verify one pass: drafts (B, w) against processed (B, w+1, K), `sjd_verify`."""
    B, w1, _ = processed.shape
    u_accept = torch.rand(B, w1 - 1, generator=generator, device=processed.device)
    u_sample = torch.rand(B, generator=generator, device=processed.device)
    return sjd_verify(processed, drafts.ids, drafts.probs, u_accept, u_sample, backend)


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


class RowLayout(NamedTuple):
    """The model rows of an SJD batch, "(g b)" in einops terms: guidance branch g (the conditional rows, then
    under CFG the unconditional ones, as `image_prompts` and `guided` expect), prompt b."""

    branches: int  # G: 2 with classifier-free guidance, else 1
    prompts: int  # B

    @property
    def rows(self) -> int:
        return self.branches * self.prompts

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) per prompt -> (G*B, ...) per model row."""
        return repeat(x, "b ... -> (g b) ...", g=self.branches)


class Progress(NamedTuple):
    codes: torch.Tensor  # (B, k + W + 1) accepted codes in [0, count); later slots are scratch
    count: torch.Tensor  # (B,) accepted codes per prompt


def window_targets(model: Transformer, vocab: Vocab, settings: SamplingSettings, layout: RowLayout, cache: KVCache,
                   head: torch.Tensor, drafts: Drafts) -> torch.Tensor:
    """One forward pass over head (G*B, T) then the drafts (B, W); the processed target logits at the W draft
    positions and the one after them, (B, W+1, K)."""
    W = drafts.ids.shape[1]
    window_ids = drafts.ids + vocab.image_offset  # codes to shared ids (drafts lie in [0, K): no checking sync)
    inputs = torch.cat([head, layout.per_row(window_ids)], dim=1)  # (G*B, T + W)
    raw = model(inputs, cache)[:, -(W + 1) :]  # (G*B, W+1, V)
    return process_logits(guided(raw, settings, layout.branches == 2)[..., vocab.image_offset :], settings)


def accept(progress: Progress, verdict: SJDVerifyResult, drafts: Drafts, num_tokens: int
           ) -> tuple[Progress, torch.Tensor]:
    """Append the n accepted drafts and the drawn token to each prompt's codes (those that fit in k); returns the
    new progress and the codes gained per prompt (B,)."""
    W = drafts.ids.shape[1]
    n, token = verdict.accept_len, verdict.token
    new = torch.cat([drafts.ids, token[:, None]], dim=1).scatter(1, n[:, None], token[:, None])  # (B, W+1)
    slots = progress.count[:, None] + torch.arange(W + 1, device=n.device)  # (B, W+1) in the scratch-padded codes
    gained = torch.minimum(n + 1, num_tokens - progress.count).clamp(min=0)  # (B,)
    return Progress(progress.codes.scatter(1, slots, new), progress.count + gained), gained


def start_rows(model: Transformer, vocab: Vocab, prompt_ids: list[list[int]], layout: RowLayout, num_tokens: int,
               window: int) -> tuple[torch.Tensor, KVCache, Progress]:
    """The left-padded prompt of every model row (G*B, P), a KV cache with room for it, the codes and a window,
    and no accepted codes yet."""
    device = model.output.weight.device
    head, starts = left_pad(image_prompts(vocab, prompt_ids, layout.branches == 2), vocab.pad_id, device)  # (G*B, P)
    cache = new_cache(model, layout.rows, head.shape[1] + num_tokens + window + 1, starts, checked=False)
    codes = torch.zeros(layout.prompts, num_tokens + window + 1, dtype=torch.long, device=device)  # (B, k + W + 1)
    return head, cache, Progress(codes, torch.zeros(layout.prompts, dtype=torch.long, device=device))


def pass_stats(gained: torch.Tensor, active: torch.Tensor, count: torch.Tensor, num_tokens: int) -> tuple[list[int], int]:
    """The pass's one wait on the device: the codes gained by each prompt that was still active, and the most codes
    any prompt still needs."""
    B = active.shape[0]
    stats = torch.cat([gained, active.long(), (num_tokens - count).amax()[None]]).tolist()
    return [g for g, a in zip(stats[:B], stats[B : 2 * B], strict=True) if a], stats[-1]


@torch.no_grad()
def generate_image_tokens_sjd(
    model: Transformer,
    vocab: Vocab,
    prompt_ids: list[list[int]],
    num_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    window: int = SJD_WINDOW,
    init: str = "uniform",
    backend: str = "auto",
) -> SJDResult:
    """Sample `num_tokens` image codes after each `<bos> text <boi>` prompt with SJD; same law as plain sampling.

    Each pass waits on the device once, to learn how many codes the prompts still need. The window then shrinks
    to what the neediest prompt can use (a pass costs per token on a CPU); for a `torch.compile`d model it stays
    `window` long (static shapes for CUDA graphs; codes past k are discarded)."""
    check_arguments(model, vocab, prompt_ids, num_tokens, window, init)
    B, k = len(prompt_ids), num_tokens
    layout = RowLayout(2 if settings.cfg_scale != 1.0 else 1, B)
    head, cache, progress = start_rows(model, vocab, prompt_ids, layout, k, window)  # head: (G*B, P)
    drafts = uniform_drafts(B, vocab.codebook_size, window, head.device, generator)  # pass 1 reads the prompts
    passes, tokens_per_pass, remaining, static = 0, [], k, hasattr(model, "_orig_mod")
    while remaining > 0:
        w = window if static else min(window, remaining - 1)  # drafts this pass
        active = progress.count < k  # (B,)
        before = torch.where(layout.per_row(active), cache.lengths, cache.starts)  # finished rows idle at start
        cache.rollback(before)
        window_drafts = Drafts(drafts.ids[:, :w], drafts.probs[:, :w])  # (B, w), (B, w, K)
        processed = window_targets(model, vocab, settings, layout, cache, head, window_drafts)  # (B, w+1, K)
        verdict = verify_pass(processed, window_drafts, generator, backend)
        cache.rollback(before + head.shape[1] + layout.per_row(verdict.accept_len))  # head + accepted drafts
        progress, gained = accept(progress, verdict, window_drafts, k)
        drafts = carry_over(processed, verdict.accept_len, window, init, generator)
        last = progress.codes.gather(1, progress.count[:, None] - 1)  # (B, 1)
        head = layout.per_row(last + vocab.image_offset)  # (G*B, 1) shared ids
        gained_by_active, remaining = pass_stats(gained, active, progress.count, k)
        passes, tokens_per_pass = passes + 1, tokens_per_pass + gained_by_active
    return SJDResult(progress.codes[:, :k], passes, tokens_per_pass)


def check_arguments(model: Transformer, vocab: Vocab, prompt_ids: list[list[int]], num_tokens: int, window: int,
                    init: str) -> None:
    if window < 1 or init not in DRAFT_INITS:
        raise ValueError(f"SJD needs window >= 1 and init in {DRAFT_INITS}, got {window}, {init!r}")
    check_length(model, image_prompts(vocab, prompt_ids, False), num_tokens)
