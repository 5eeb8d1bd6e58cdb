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

With `chains` C > 1 (`--chains C`; the default is 1) each prompt runs C draft windows as extra batch rows of
the same pass, a token tree: the first draft position branches over the C most likely codes, the drafts come from the
mean of the chains' predictions, `verify_chains` verifies them together by recursive rejection sampling (without a
loop over positions), and every chain continues from the winning chain's keys and values at this pass's slots.

A pass waits on the device once (the GPU path: docs/sjd.md), to learn how many codes the prompts still need.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange, repeat

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
from onetok.kernels import sjd_verify
from onetok.kernels.reference import inverse_cdf

DRAFT_INITS = ("uniform", "prev")
# draft chains per image when none are asked for, on every device: one chain (the paper's algorithm) was the fastest
# in wall clock on a 2-core CPU and on an H200 (docs/sjd.md, "How many chains"; docs/benchmarks.md)
DEFAULT_CHAINS = 1


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


def proposal(processed: torch.Tensor) -> torch.Tensor:
    """Logits (B, w+1, K) to draft the next window from, given one pass's processed logits (B, C, w+1, K).

    One chain: its own predictions. Several: the mean of the chains' predicted distributions at each position.
    Each chain conditioned them on different candidate tokens, so the mixture is broader than any one of them and
    covers the true next distribution (conditioned on a token no chain had) more often. Any proposal keeps SJD
    lossless; this one only raises acceptance (docs/sjd.md)."""
    if processed.shape[1] == 1:
        return processed[:, 0]
    return processed.float().softmax(-1).mean(1).log()


def branch_first(drafts: Drafts, chains: int) -> Drafts:
    """Turn C chains per prompt (rows b*C + c, all drafted from the same distributions) into a token tree.

    Chain c's first draft becomes the c-th most likely code of that position's distribution, a deterministic draft
    (one-hot q); its later drafts stay as drawn. Verified by `verify_chains`, the first position then accepts with
    probability p(top C codes) instead of sum(min(p, q)) for a single sampled draft."""
    BC, W, K = drafts.probs.shape
    top = drafts.probs[::chains, 0].topk(chains, dim=-1).indices.flatten()  # (B*C,): chain c gets candidate c
    ids, probs = drafts.ids.clone(), drafts.probs.clone()
    ids[:, 0] = top
    probs[:, 0] = torch.zeros_like(probs[:, 0]).scatter_(1, top[:, None], 1.0)  # one-hot (F.one_hot would sync)
    return Drafts(ids, probs)


# --------------------------------------------------------------------------------------------------------------------
# Verification of several draft chains (a token tree)
# --------------------------------------------------------------------------------------------------------------------


class ChainVerdict(NamedTuple):
    accept_len: torch.Tensor  # (B,) accepted drafts n
    token: torch.Tensor  # (B,) the one token drawn after them
    winner: torch.Tensor  # (B,) a chain whose first n drafts are the accepted ones (its cache is kept)


def residual(target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, target - q)) per row (..., K); rows where that is all zero keep `target` (probability-0 case)."""
    r = (target - q).clamp(min=0.0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), target)


@torch.no_grad()
def verify_chains(
    processed: torch.Tensor, drafts: Drafts, u_accept: torch.Tensor, u_sample: torch.Tensor
) -> ChainVerdict:
    """Lossless multi-draft verification (recursive rejection sampling, SpecInfer) over C draft chains per row.

    processed (B, C, w+1, K): each chain's processed logits; drafts.ids (B, C, w), drafts.probs (B, C, w, K);
    u_accept (B, C, w), u_sample (B,). At position i only the chains whose drafts so far equal the accepted
    tokens are alive; they share one target p_i (taken from the first alive chain). Their drafts are tried in
    chain order: draft x of chain c is accepted iff u * q_c(x) < r(x), where r starts at p_i and after each
    rejection becomes norm(max(0, r - q_c)). If every alive draft is rejected the token is drawn from the last r
    (from p_w if all w positions accepted). With C = 1 this is exactly `onetok.kernels.sjd_verify`.

    No loop over positions and no host sync: every chain h is taken in turn as the hypothetical winner, and all
    (h, i) are verified at once with the chains alive at i when h's drafts before i were the accepted ones. The
    hypotheses consistent with what was accepted give the true outcome, so n is the longest run of positions a
    hypothesis survives, and the winner the first chain with that run. Work: C x the single-chain verification.
    """
    B, C, w1, K = processed.shape
    w, x = w1 - 1, drafts.ids  # x (B, C, w)
    p = processed.float().softmax(-1)  # (B, C, w+1, K)
    rows, first = torch.arange(B, device=p.device), torch.zeros(B, dtype=torch.long, device=p.device)
    if w == 0:  # no drafts: one token from p_0
        return ChainVerdict(first, inverse_cdf(p[:, 0, 0], u_sample.float()), first)
    same = x[:, :, None] == x[:, None]  # (B, H, C, w): chain c's draft at j equals hypothesis h's
    prefix_same = same.long().cumprod(-1).bool()  # (B, H, C, w): equal at every j <= i
    alive = torch.cat([torch.ones_like(same[..., :1]), prefix_same[..., :-1]], dim=-1)  # equal at every j < i
    lead = alive.long().argmax(2)  # (B, H, w): the first alive chain gives the target
    r = p[:, :, :w].gather(1, lead[..., None].expand(B, C, w, K))  # (B, H, w, K)
    accepted = torch.zeros(B, C, w, dtype=torch.bool, device=p.device)  # (B, H, w)
    token = torch.zeros(B, C, w, dtype=torch.long, device=p.device)
    for c in range(C):  # the chains in order; vectorised over hypotheses and positions
        trying = alive[:, :, c] & ~accepted  # (B, H, w)
        xc, qc = x[:, c, None], drafts.probs[:, c, None].float()  # (B, 1, w), (B, 1, w, K)
        q_x = qc.gather(-1, xc[..., None])[..., 0]  # (B, 1, w)
        ok = trying & (u_accept[:, c, None] * q_x < r.gather(-1, xc[..., None].expand(B, C, w, 1))[..., 0])
        token, accepted = torch.where(ok, xc, token), accepted | ok
        r = torch.where((trying & ~ok)[..., None], residual(r, qc), r)
    survived = (accepted & (token == x)).long().cumprod(-1).sum(-1)  # (B, H): positions hypothesis h survives
    n = survived.amax(1)  # (B,)
    winner = (survived == n[:, None]).long().argmax(1)  # (B,)
    stopped = r[rows, winner, n.clamp(max=w - 1)]  # (B, K) the residual left where the run stopped
    weights = torch.where((n < w)[:, None], stopped, p[rows, winner, w])
    return ChainVerdict(n, inverse_cdf(weights, u_sample.float()), winner)


def verify_pass(
    processed: torch.Tensor, drafts: Drafts, generator: torch.Generator | None, backend: str
) -> ChainVerdict:
    """Draw the uniforms and verify one pass: drafts (B*C, w) against processed (B, C, w+1, K), with the
    `sjd_verify` kernel for one chain and `verify_chains` for several."""
    B, C, w1, K = processed.shape
    u_accept = torch.rand(B * C, w1 - 1, generator=generator, device=processed.device)
    u_sample = torch.rand(B, generator=generator, device=processed.device)
    if C == 1:
        n, token = sjd_verify(processed[:, 0], drafts.ids, drafts.probs, u_accept, u_sample, backend)
        return ChainVerdict(n, token, torch.zeros_like(n))
    chains = Drafts(drafts.ids.view(B, C, w1 - 1), drafts.probs.view(B, C, w1 - 1, K))
    return verify_chains(processed, chains, u_accept.view(B, C, w1 - 1), u_sample)


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


class RowLayout(NamedTuple):
    """The model rows of an SJD batch, "(g b c)" in einops terms: guidance branch g (the conditional rows, then
    under CFG the unconditional ones, as `image_prompts` and `guided` expect), prompt b, draft chain c."""

    branches: int  # G: 2 with classifier-free guidance, else 1
    prompts: int  # B
    chains: int  # C

    @property
    def rows(self) -> int:
        return self.branches * self.prompts * self.chains

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) per prompt -> (G*B*C, ...) per model row."""
        return repeat(x, "b ... -> (g b c) ...", g=self.branches, c=self.chains)

    def per_chain_row(self, x: torch.Tensor) -> torch.Tensor:
        """(B*C, ...) per chain -> (G*B*C, ...) per model row."""
        return repeat(x, "bc ... -> (g bc) ...", g=self.branches)

    def winner_rows(self, winner: torch.Tensor) -> torch.Tensor:
        """(B,) winning chain per prompt -> (G*B*C,) the model row each row copies: its own prompt's winner."""
        rows = torch.arange(self.rows, device=winner.device)
        return rows - rows % self.chains + self.per_row(winner)


class Progress(NamedTuple):
    codes: torch.Tensor  # (B, k + W + 1) accepted codes in [0, count); later slots are scratch
    count: torch.Tensor  # (B,) accepted codes per prompt


def window_targets(model: Transformer, vocab: Vocab, settings: SamplingSettings, layout: RowLayout, cache: KVCache,
                   head: torch.Tensor, drafts: Drafts) -> torch.Tensor:
    """One forward pass over head (G*B*C, T) then each chain's drafts (B*C, W); the processed target logits at
    the W draft positions and the one after them, (B, C, W+1, K)."""
    W = drafts.ids.shape[1]
    window_ids = drafts.ids + vocab.image_offset  # codes to shared ids (drafts lie in [0, K): no checking sync)
    inputs = torch.cat([head, layout.per_chain_row(window_ids)], dim=1)  # (G*B*C, T + W)
    raw = model(inputs, cache)[:, -(W + 1) :]  # (G*B*C, W+1, V)
    processed = process_logits(guided(raw, settings, layout.branches == 2)[..., vocab.image_offset :], settings)
    return rearrange(processed, "(b c) w k -> b c w k", c=layout.chains)


def keep_accepted(cache: KVCache, layout: RowLayout, before: torch.Tensor, head_len: int, window: int,
                  verdict: ChainVerdict) -> None:
    """Every chain continues from its prompt's winner: copy the winner's last head slot and window slots (the only
    slots where the chains can differ), then cut each row back to head + accepted drafts."""
    if layout.chains > 1:
        slots = (before + head_len - 1)[:, None] + torch.arange(window + 1, device=before.device)  # (G*B*C, W+1)
        cache.copy_slots(layout.winner_rows(verdict.winner), slots)
    cache.rollback(before + head_len + layout.per_row(verdict.accept_len))


def accept(progress: Progress, verdict: ChainVerdict, drafts: Drafts, layout: RowLayout,
           num_tokens: int) -> tuple[Progress, torch.Tensor]:
    """Append the winner's n accepted drafts and the drawn token to each prompt's codes (those that fit in k);
    returns the new progress and the codes gained per prompt (B,)."""
    B, W = layout.prompts, drafts.ids.shape[1]
    n, token = verdict.accept_len, verdict.token
    chosen = rearrange(drafts.ids, "(b c) w -> b c w", c=layout.chains)[torch.arange(B), verdict.winner]  # (B, W)
    new = torch.cat([chosen, token[:, None]], dim=1).scatter(1, n[:, None], token[:, None])  # (B, W+1)
    slots = progress.count[:, None] + torch.arange(W + 1, device=n.device)  # (B, W+1) in the scratch-padded codes
    gained = torch.minimum(n + 1, num_tokens - progress.count).clamp(min=0)  # (B,)
    return Progress(progress.codes.scatter(1, slots, new), progress.count + gained), gained


def next_drafts(processed: torch.Tensor, accept_len: torch.Tensor, window: int, init: str,
                generator: torch.Generator | None) -> Drafts:
    """Drafts (B*C, W) for the next pass from this pass's processed logits (B, C, W+1, K)."""
    C = processed.shape[1]
    proposed = repeat(proposal(processed), "b w k -> (b c) w k", c=C)
    drafts = carry_over(proposed, accept_len.repeat_interleave(C), window, init, generator)
    return branch_first(drafts, C) if C > 1 else drafts


def start_rows(model: Transformer, vocab: Vocab, prompt_ids: list[list[int]], layout: RowLayout, num_tokens: int,
               window: int) -> tuple[torch.Tensor, KVCache, Progress]:
    """The left-padded prompt of every model row (G*B*C, P), a KV cache with room for it, the codes and a window,
    and no accepted codes yet."""
    device = model.output.weight.device
    chained = [p for p in prompt_ids for _ in range(layout.chains)]  # B*C prompts, "(b c)"
    head, starts = left_pad(image_prompts(vocab, chained, layout.branches == 2), vocab.pad_id, device)  # (G*B*C, P)
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
    window: int = 16,
    init: str = "uniform",
    backend: str = "auto",
    chains: int = DEFAULT_CHAINS,
) -> SJDResult:
    """Sample `num_tokens` image codes after each `<bos> text <boi>` prompt with SJD; same law as plain sampling.

    `chains` > 1 drafts that many windows per prompt as extra rows of the same pass, verified together
    (`verify_chains`). Each pass waits on the device once, to learn how many codes the prompts still need. The
    window then shrinks to what the neediest prompt can use (a pass costs per token on a CPU); for a
    `torch.compile`d model it stays `window` long (static shapes for CUDA graphs; codes past k are discarded)."""
    check_arguments(model, vocab, prompt_ids, num_tokens, window, init, chains)
    B, k = len(prompt_ids), num_tokens
    layout = RowLayout(2 if settings.cfg_scale != 1.0 else 1, B, chains)
    head, cache, progress = start_rows(model, vocab, prompt_ids, layout, k, window)  # head: (G*B*C, P)
    drafts = uniform_drafts(B * chains, vocab.codebook_size, window, head.device, generator)  # pass 1 reads prompts
    passes, tokens_per_pass, remaining, static = 0, [], k, hasattr(model, "_orig_mod")
    while remaining > 0:
        w = window if static else min(window, remaining - 1)  # drafts this pass
        active = progress.count < k  # (B,)
        before = torch.where(layout.per_row(active), cache.lengths, cache.starts)  # finished rows idle at start
        cache.rollback(before)
        window_drafts = Drafts(drafts.ids[:, :w], drafts.probs[:, :w])  # (B*C, w), (B*C, w, K)
        processed = window_targets(model, vocab, settings, layout, cache, head, window_drafts)  # (B, C, w+1, K)
        verdict = verify_pass(processed, window_drafts, generator, backend)
        keep_accepted(cache, layout, before, head.shape[1], w, verdict)
        progress, gained = accept(progress, verdict, window_drafts, layout, k)
        drafts = next_drafts(processed, verdict.accept_len, window, init, generator)
        last = progress.codes.gather(1, progress.count[:, None] - 1)  # (B, 1)
        head = layout.per_row(last + vocab.image_offset)  # (G*B*C, 1) shared ids
        gained_by_active, remaining = pass_stats(gained, active, progress.count, k)
        passes, tokens_per_pass = passes + 1, tokens_per_pass + gained_by_active
    return SJDResult(progress.codes[:, :k], passes, tokens_per_pass)


def check_arguments(model: Transformer, vocab: Vocab, prompt_ids: list[list[int]], num_tokens: int, window: int,
                    init: str, chains: int) -> None:
    if window < 1 or init not in DRAFT_INITS or not 1 <= chains <= vocab.codebook_size:
        raise ValueError(f"SJD needs window >= 1, 1 <= chains <= {vocab.codebook_size} and init in {DRAFT_INITS}, "
                         f"got {window}, {chains}, {init!r}")
    check_length(model, image_prompts(vocab, prompt_ids, False), num_tokens)
