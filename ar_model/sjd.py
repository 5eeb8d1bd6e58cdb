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

With `chains` C > 1 (the default, `DEFAULT_CHAINS`) each prompt runs C draft windows as extra batch rows of the same
pass, a token tree: the first draft position branches over the C most likely codes, the drafts come from the mean
of the chains' predictions, `verify_chains` verifies them together by recursive rejection sampling, and every chain
continues from the winning chain's KV cache.
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
from onetok.kernels.reference import inverse_cdf

DRAFT_INITS = ("uniform", "prev")
DEFAULT_CHAINS = 8  # draft chains per image; 1 is the paper's algorithm (docs/sjd.md, docs/benchmarks.md)


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
    probs[:, 0] = torch.nn.functional.one_hot(top, K).to(probs.dtype)
    return Drafts(ids, probs)


# --------------------------------------------------------------------------------------------------------------------
# Verification of several draft chains (a token tree)
# --------------------------------------------------------------------------------------------------------------------


class ChainVerdict(NamedTuple):
    accept_len: torch.Tensor  # (B,) accepted drafts n
    token: torch.Tensor  # (B,) the one token drawn after them
    winner: torch.Tensor  # (B,) a chain whose first n drafts are the accepted ones (its cache is kept)


def residual(target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, target - q)) per row (B, K); rows where that is all zero keep `target` (probability-0 case)."""
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
    """
    B, C, w1, K = processed.shape
    p = processed.float().softmax(-1)  # (B, C, w+1, K)
    rows = torch.arange(B, device=p.device)
    alive = torch.ones(B, C, dtype=torch.bool, device=p.device)
    open_ = torch.ones(B, dtype=torch.bool, device=p.device)  # still accepting
    n = torch.zeros(B, dtype=torch.long, device=p.device)
    weights = torch.zeros(B, K, device=p.device)  # what the final token is drawn from
    for i in range(w1 - 1):
        r = p[rows, alive.long().argmax(1), i]  # (B, K): the exact target at position i
        accepted = torch.zeros(B, dtype=torch.bool, device=p.device)
        token = torch.zeros(B, dtype=torch.long, device=p.device)
        for c in range(C):
            trying = open_ & alive[:, c] & ~accepted
            x, q = drafts.ids[:, c, i], drafts.probs[:, c, i].float()  # (B,), (B, K)
            ok = trying & (u_accept[:, c, i] * q.gather(1, x[:, None])[:, 0] < r.gather(1, x[:, None])[:, 0])
            token, accepted = torch.where(ok, x, token), accepted | ok
            r = torch.where((trying & ~ok)[:, None], residual(r, q), r)
        stopped = open_ & ~accepted
        weights = torch.where(stopped[:, None], r, weights)
        alive = torch.where(accepted[:, None], alive & (drafts.ids[:, :, i] == token[:, None]), alive)
        n, open_ = n + accepted.long(), accepted
        if not bool(open_.any()):
            break
    winner = alive.long().argmax(1)  # (B,)
    weights = torch.where(open_[:, None], p[rows, winner, w1 - 1], weights)
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

    `chains` > 1 drafts that many independent windows per prompt, runs them as extra batch rows of the same pass and
    verifies them together (`verify_chains`); the winning chain's KV cache is copied to the others."""
    if window < 1 or init not in DRAFT_INITS or not 1 <= chains <= vocab.codebook_size:
        raise ValueError(f"SJD needs window >= 1, 1 <= chains <= {vocab.codebook_size} and init in {DRAFT_INITS}, "
                         f"got {window}, {chains}, {init!r}")
    cfg = settings.cfg_scale != 1.0
    reps = 2 if cfg else 1  # model rows per chain: conditional (+ unconditional)
    device = model.output.weight.device
    B, C, k = len(prompt_ids), chains, num_tokens

    def target(raw: torch.Tensor) -> torch.Tensor:  # model logits (reps*B*C, ..., V) -> processed (B, C, ..., K)
        out = process_logits(guided(raw, settings, cfg)[..., vocab.image_offset :], settings)
        return out.view(B, C, *out.shape[1:])

    def per_row(x: torch.Tensor) -> torch.Tensor:  # (B, ...) per prompt -> (reps*B*C, ...) per model row
        return x.repeat_interleave(C, 0).repeat(reps, *([1] * (x.dim() - 1)))

    chained = [p for p in prompt_ids for _ in range(C)]  # model row r*B*C + b*C + c: prompt b, chain c
    ids, starts = left_pad(image_prompts(vocab, chained, cfg), vocab.pad_id, device)
    cache = model.new_cache(ids.shape[0], ids.shape[1] + k + window + 1, starts)
    codes = torch.zeros(B, k, dtype=torch.long, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)  # accepted tokens per prompt
    # pass 1 runs the prompts and a window of uniform drafts together: no separate prefill pass
    drafts = uniform_drafts(B * C, vocab.codebook_size, window, device, generator)
    passes, tokens_per_pass = 0, []
    while True:
        remaining = k - count  # (B,)
        active = remaining > 0
        if not bool(active.any()):
            break
        w = min(window, int(remaining.max()) - 1)  # never draft past the k-th token
        if passes == 0:
            head, before = ids, cache.lengths.clone()  # (B', T) prompts into the empty cache
        else:  # each prompt's last accepted token; finished rows are reset
            head = per_row(vocab.image_to_vocab(codes.gather(1, (count - 1)[:, None])))  # (B', 1)
            before = torch.where(per_row(active), cache.lengths, cache.starts)
            cache.rollback(before)
        window_ids = vocab.image_to_vocab(drafts.ids[:, :w])  # (B*C, w)
        inputs = torch.cat([head, window_ids.repeat(reps, 1)], dim=1)
        processed = target(model(inputs, cache)[:, -(w + 1) :])  # (B, C, w+1, K)
        passes += 1
        window_drafts = Drafts(drafts.ids[:, :w], drafts.probs[:, :w])
        n, token, winner = verify_pass(processed, window_drafts, generator, backend)
        if C > 1:  # every chain of a prompt continues from its winner's cache
            rows = torch.arange(cache.batch, device=device)
            cache.reorder(rows - rows % C + per_row(winner))
        accepted = window_drafts.ids.view(B, C, w)[torch.arange(B, device=device), winner]  # (B, w)
        # the new tokens are the winner's drafts[:n] then `token`; keep those that fit in k
        new = torch.cat([accepted, token[:, None]], dim=1).scatter(1, n[:, None], token[:, None])
        gained = torch.minimum(n + 1, remaining).clamp(min=0)  # (B,)
        rows, j = (torch.arange(w + 1, device=device) < gained[:, None]).nonzero(as_tuple=True)
        codes[rows, count[rows] + j] = new[rows, j]
        tokens_per_pass += gained[active].tolist()
        count = count + gained
        cache.rollback(before + head.shape[1] + per_row(n))  # head + accepted drafts stay cached
        drafts = carry_over(proposal(processed).repeat_interleave(C, 0), n.repeat_interleave(C), window, init,
                            generator)
        if C > 1:
            drafts = branch_first(drafts, C)
    return SJDResult(codes, passes, tokens_per_pass)
