"""The entropy coder's prior in integer arithmetic: the same frequencies, bit for bit, on every machine.

`IntegerPrior.from_prior(prior)` quantises a trained `TilePrior` (post-training, no retraining) and runs the same
network -- embeddings, 2 x (LayerNorm, causal attention, LayerNorm, MLP), LayerNorm, head -- on integers, ending in
integer frequencies that sum to exactly `PROB_SCALE`, each >= 1: what the range coder of payload 2 sees
(docs/format.md, "the exactness argument").

- Every value is an integer fixed-point number (`RES_FRAC` fraction bits on the residual stream, `ACT_FRAC`
  elsewhere), clamped to a stated range, held in float64 (exact below 2**53, and fast) or int64; weights are rounded
  per output channel to a power-of-two scale (|w| <= 2**WEIGHT_BITS).
- Matrix products run as float64 GEMMs on integer-valued operands. Every product and partial sum is an integer
  below 2**53 (`check_exact`, asserted when the prior is built), which float64 represents exactly, so the result is
  the exact integer whatever the summation order, blocking, vector width, FMA use or thread count -- on any CPU and
  on CUDA alike.
- Everything else is integer arithmetic: sums (exact in any order), products, floor divisions with rounding, an
  exact integer square root (LayerNorm), and table look-ups for exp (both softmaxes) and GELU. The tables are computed with
  Python's `decimal` module, whose every operation is specified to the digit (correctly rounded), so they are the
  same on every machine and Python version; `table_digest` pins them (tests).
"""

from __future__ import annotations

import decimal
import hashlib
import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from onetok.tokenizers.codec.format import (
    ACT_FRAC,
    ACT_LIMIT,
    EXP_FRAC,
    EXP_ONE,
    FREQ_RECIPROCAL,
    GAIN_FRAC,
    GELU_FRAC,
    GELU_RANGE,
    NORM_GUARD,
    NORM_RECIPROCAL,
    PROB_SCALE,
    RES_FRAC,
    RES_LIMIT,
    SCORE_SHIFT,
    WEIGHT_BITS,
)

EXACT = 1 << 53  # float64 holds every integer of magnitude below this exactly
INT64 = 1 << 63
_TINY = decimal.Decimal("1e-30")  # the GELU series stops below this term
_PI = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494459")

# --------------------------------------------------------------------------------------------------------------------
# Tables (decimal arithmetic: specified to the digit, so identical everywhere)
# --------------------------------------------------------------------------------------------------------------------


def _round(value: decimal.Decimal) -> int:
    return int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


@lru_cache(maxsize=1)
def exp_table() -> torch.Tensor:
    """EXP[j] = round(EXP_ONE * exp(-j / 2**EXP_FRAC)) for j = 0, 1, ... while it is > 0, then one 0."""
    with decimal.localcontext(decimal.Context(prec=50)):
        step = (decimal.Decimal(-1) / (1 << EXP_FRAC)).exp()
        values, v = [], decimal.Decimal(EXP_ONE)
        while _round(v) > 0:
            values.append(_round(v))
            v *= step
    return torch.tensor(values + [0], dtype=torch.float64)


def _gelu(x: decimal.Decimal) -> decimal.Decimal:
    """x * Phi(x), Phi the standard normal CDF: 1/2 + phi(x) * sum_n x**(2n+1) / (2n+1)!!  (all terms positive)."""
    if x == 0:
        return decimal.Decimal(0)
    term, total, n = x, x, 0
    while abs(term) > _TINY:
        n += 1
        term = term * x * x / (2 * n + 1)
        total += term
    phi = (-x * x / 2).exp() / (2 * _PI).sqrt()
    return x * (decimal.Decimal(1) / 2 + phi * total)


@lru_cache(maxsize=1)
def gelu_table() -> torch.Tensor:
    """GELU[i] = round(2**ACT_FRAC * gelu(x_i)), x_i = i / 2**GELU_FRAC - GELU_RANGE, i = 0 .. 2 * GELU_RANGE *
    2**GELU_FRAC; the negative half from gelu(-x) = gelu(x) - x."""
    half = GELU_RANGE << GELU_FRAC
    scale = decimal.Decimal(1 << ACT_FRAC)
    with decimal.localcontext(decimal.Context(prec=36)):
        positive = [_gelu(decimal.Decimal(i) / (1 << GELU_FRAC)) for i in range(half + 1)]
        values = [_round((g - decimal.Decimal(i) / (1 << GELU_FRAC)) * scale) for i, g in
                  reversed(list(enumerate(positive)))][:-1] + [_round(g * scale) for g in positive]
    return torch.tensor(values, dtype=torch.float64)


def table_digest() -> str:
    """SHA-256 of both tables (int64 little-endian): part of the format, pinned by the tests."""
    h = hashlib.sha256()
    for table in (exp_table(), gelu_table()):
        h.update(table.numpy().astype("<i8").tobytes())  # exact: integers
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Integer primitives. Tensors are float64 holding integers of magnitude below 2**53 (`EXACT`): +, -, *, a product of
# such integers and a multiplication by a power of two are then exact, so the value is the integer one would get in
# int64 -- and float64 runs vectorised and through BLAS. Each caller states the bound that keeps it below 2**53.
# --------------------------------------------------------------------------------------------------------------------


def check_exact(terms: int, a_max: int, b_max: int, extra: int = 0) -> None:
    """A sum of `terms` products bounded by a_max * b_max (plus `extra`) stays below 2**53: exact in float64."""
    if terms * a_max * b_max + extra >= EXACT:
        raise ValueError(f"integer prior: {terms} x {a_max} x {b_max} + {extra} is not below 2**53")


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of integer-valued float64 matrices; exact in any summation order (the callers' `check_exact`)."""
    return torch.matmul(a, b)


def shift_round_(x: torch.Tensor, half: torch.Tensor | float, scale: torch.Tensor | float) -> torch.Tensor:
    """round(x / 2**k), halves up, given half = 2**(k-1) and scale = 2**-k (k >= 1): floor((x + half) * scale), exact
    for integers |x| + half < 2**53 (the sum is an integer below 2**53, the scaling a power of two). In place: the
    callers pass a temporary."""
    return x.add_(half).mul_(scale).floor_()


def floor_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """floor(num / den) of integers, den > 0, |num| and |den * quotient| below 2**53: the correctly rounded float64
    quotient is within one of it, and the exact remainder decides which."""
    q = torch.div(num, den).floor_()
    r = torch.addcmul(num, q, den, value=-1)  # num - q * den: the product is an exact integer, so FMA or not alike
    return q.sub_((r < 0).double()).add_((r >= den).double())


def round_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """round(num / den), halves up, for integers den > 0 (bounds as `floor_div`, for 2 * num + den)."""
    return floor_div(2 * num + den, 2 * den)


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(x)) of int64 x in [0, 2**62], exactly: float64 sqrt (within 1 of it), then integer correction."""
    s = torch.sqrt(x.double()).long()
    s = s - (s * s > x).long()
    return s + ((s + 1) * (s + 1) <= x).long()


def clamp_(x: torch.Tensor, limit: int) -> torch.Tensor:
    """x clamped to |x| < limit, in place (the callers pass a temporary)."""
    return x.clamp_(-(limit - 1), limit - 1)


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a float64 table and integer-valued float64 indices (>= 0), clamped to the table's last
    entry."""
    return torch.take(table, index.clamp(max=len(table) - 1).long())


def _to_int(values: np.ndarray) -> torch.Tensor:
    """float64 values (float32 weights times powers of two: exact) -> the nearest integers, as float64."""
    return torch.from_numpy(np.rint(values))


def _pow2(x: np.ndarray, e: np.ndarray | int) -> np.ndarray:
    """x * 2**e, exact for float64 x (no overflow here)."""
    return np.ldexp(x, e)


# --------------------------------------------------------------------------------------------------------------------
# Quantised layers
# --------------------------------------------------------------------------------------------------------------------


class IntLinear(NamedTuple):
    weight: torch.Tensor  # (in, out) integers |w| <= 2**WEIGHT_BITS, transposed for x @ w
    offset: torch.Tensor  # (out,) the bias at the accumulator's scale 2**(in_frac + s_c), plus half a step
    scale: torch.Tensor  # (out,) 2**-(in_frac + s_c - out_frac): accumulator -> out_frac fraction bits


def quantize_linear(layer: nn.Linear, in_frac: int, out_frac: int, in_limit: int = ACT_LIMIT) -> IntLinear:
    """Per output channel c, the largest s_c with max |w_c| * 2**s_c < 2**WEIGHT_BITS (frexp: exact)."""
    w = layer.weight.detach().cpu().double().numpy()  # (out, in): float32 -> float64 is exact
    peak = np.abs(w).max(axis=1)
    _, exponent = np.frexp(peak)  # peak = m * 2**exponent, m in [0.5, 1)
    s = np.where(peak > 0, WEIGHT_BITS - exponent, 0).astype(np.int64)  # (out,)
    shift = in_frac + s - out_frac
    if shift.min() < 1:
        raise ValueError("integer prior: a weight is too large for its fixed-point format")
    weight = _to_int(_pow2(w, s[:, None]))  # (out, in)
    b = layer.bias.detach().cpu().double().numpy() if layer.bias is not None else np.zeros(len(s))
    offset = _to_int(_pow2(b, in_frac + s)) + torch.from_numpy(_pow2(np.ones(len(s)), shift - 1))
    check_exact(w.shape[1], in_limit, 1 << WEIGHT_BITS, int(offset.abs().max()))
    return IntLinear(weight.T.contiguous(), offset, torch.from_numpy(_pow2(np.ones(len(s)), -shift)))


def linear(layer: IntLinear, x: torch.Tensor) -> torch.Tensor:
    """x (..., in) -> (..., out) at the layer's out_frac, rounded: floor((x @ w + offset) * scale)."""
    acc = torch.addmm(layer.offset, x.reshape(-1, x.shape[-1]), layer.weight)  # (n, out), exact: see check_exact
    return acc.mul_(layer.scale).floor_().view(*x.shape[:-1], -1)


class IntNorm(NamedTuple):
    gain: torch.Tensor  # (D,) at GAIN_FRAC
    shift: torch.Tensor  # (D,) at ACT_FRAC + GAIN_FRAC
    eps: int  # eps at 2 * RES_FRAC fraction bits, times 4**NORM_GUARD


def quantize_norm(norm: nn.LayerNorm) -> IntNorm:
    D = norm.normalized_shape[0]
    check_exact(D, 2 * RES_LIMIT, 2 * RES_LIMIT)  # the sum of squares, in float64
    if D * (2 * RES_LIMIT) ** 2 * 4 ** NORM_GUARD >= INT64 // 2:  # ... scaled by 4**NORM_GUARD in int64
        raise ValueError(f"integer prior: LayerNorm of width {D} could overflow int64")
    check_exact(1, math.isqrt(D) + 1, 1 << (ACT_FRAC + NORM_RECIPROCAL), 1 << NORM_RECIPROCAL)  # c * inverse
    gain = _to_int(_pow2(norm.weight.detach().cpu().double().numpy(), GAIN_FRAC))
    shift = _to_int(_pow2(norm.bias.detach().cpu().double().numpy(), ACT_FRAC + GAIN_FRAC))
    check_exact(1, ACT_LIMIT << 8, int(gain.abs().max()), int(shift.abs().max()))  # |normalised| <= sqrt(D) < 2**8
    eps = int(np.rint(np.ldexp(float(norm.eps), 2 * RES_FRAC))) << (2 * NORM_GUARD)
    return IntNorm(gain, shift, eps)


def layer_norm(norm: IntNorm, x: torch.Tensor) -> torch.Tensor:
    """Residual x (..., D) at RES_FRAC -> normalised, gained and shifted at ACT_FRAC, clamped to ACT_LIMIT."""
    D = x.shape[-1]
    mean = torch.div(x.sum(-1, keepdim=True).long(), D, rounding_mode="floor").double()  # floor, in int64: exact
    c = x - mean  # |c| < 2 * RES_LIMIT
    var = (c * c).sum(-1, keepdim=True).long()  # D * variance at 2 * RES_FRAC fraction bits, exact
    sigma = isqrt(torch.div(var << (2 * NORM_GUARD), D, rounding_mode="floor") + norm.eps)  # at RES_FRAC + GUARD
    inverse = torch.div(1 << (ACT_FRAC + NORM_GUARD + NORM_RECIPROCAL), sigma, rounding_mode="floor").double()
    # |c| * inverse <= sqrt(D) * 2**(ACT_FRAC + NORM_RECIPROCAL): |c| <= sqrt(var), sigma >= sqrt(var / D) * 2**GUARD
    normalised = shift_round_(c * inverse, float(1 << (NORM_RECIPROCAL - 1)), 2.0 ** -NORM_RECIPROCAL)  # ACT_FRAC
    gained = normalised.mul_(norm.gain).add_(norm.shift)  # at ACT_FRAC + GAIN_FRAC
    return clamp_(shift_round_(gained, float(1 << (GAIN_FRAC - 1)), 2.0 ** -GAIN_FRAC), ACT_LIMIT)


@lru_cache(maxsize=1)
def gelu_fine() -> torch.Tensor:
    """The GELU table at every ACT_FRAC step of [-GELU_RANGE, GELU_RANGE): `gelu_table` interpolated linearly,
    round((right - left) * fraction / 2**step) added to the left entry (integers, halves up)."""
    table, step = gelu_table().long(), ACT_FRAC - GELU_FRAC
    m = torch.arange(2 * GELU_RANGE << ACT_FRAC)
    i, fraction = m >> step, m & ((1 << step) - 1)
    delta = (table[i + 1] - table[i]) * fraction
    return (table[i] + torch.div(delta + (1 << (step - 1)), 1 << step, rounding_mode="floor")).double()


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of x at ACT_FRAC: `gelu_fine` inside [-GELU_RANGE, GELU_RANGE), x above it, the table's first entry
    below it."""
    lo, hi = -(GELU_RANGE << ACT_FRAC), GELU_RANGE << ACT_FRAC
    inside = torch.take(gelu_fine(), x.clamp(lo, hi - 1).sub_(lo).long())
    return torch.where(x >= hi, x, inside)


def frequencies(logits: torch.Tensor) -> torch.Tensor:
    """Logits (n, K) at ACT_FRAC -> int64 frequencies (n, K), each >= 1, every row summing to PROB_SCALE."""
    n, K = logits.shape
    check_exact(1, EXP_ONE * PROB_SCALE, (1 << FREQ_RECIPROCAL) // EXP_ONE)
    if K >= PROB_SCALE // 2:
        raise ValueError(f"integer prior: {K} symbols leave too little of the {PROB_SCALE} frequency total")
    step = ACT_FRAC - EXP_FRAC
    steps = shift_round_(logits.max(-1, keepdim=True).values - logits, float(1 << (step - 1)), 2.0 ** -step)
    index = torch.arange(K).expand(n, K)
    top = torch.where(steps == 0, index, K).min(-1, keepdim=True).values  # the first largest takes the remainder
    weights = lookup(exp_table(), steps)  # (n, K), the maximum's is EXP_ONE
    inverse = torch.div(1 << FREQ_RECIPROCAL, weights.sum(-1, keepdim=True).long(), rounding_mode="floor")
    # w * (PROB_SCALE - K) * inverse <= EXP_ONE * PROB_SCALE * 2**FREQ_RECIPROCAL / EXP_ONE = 2**52, and
    # (PROB_SCALE - K) * inverse <= 2**16 * 2**20: every product is an exact integer, in any order
    scaled = weights.mul_(float(PROB_SCALE - K) * inverse.double())
    freqs = scaled.mul_(2.0 ** -FREQ_RECIPROCAL).floor_().long().add_(1)  # sums to at most PROB_SCALE
    return freqs.scatter_add_(1, top, PROB_SCALE - freqs.sum(-1, keepdim=True))


# --------------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------------


class IntBlock(NamedTuple):
    norm1: IntNorm
    qkv: IntLinear  # -> q, k, v at ACT_FRAC
    proj: IntLinear  # -> RES_FRAC (added to the residual)
    norm2: IntNorm
    fc1: IntLinear  # -> ACT_FRAC
    fc2: IntLinear  # -> RES_FRAC
    heads: int
    score_scale: float  # attention scores (at 2 * ACT_FRAC) -> exp-table steps: * score_scale / 2**SCORE_SHIFT
    cap: float  # score distances beyond this weigh 0 anyway (they are clamped to it, keeping products below 2**53)


class IntCache(NamedTuple):
    """Keys and values of the positions seen so far, per block (B, H, P + L - 1, d) integers, filled up to
    `length[0]`."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: list[int]


def quantize_block(block: nn.Module) -> IntBlock:
    D = block.qkv.in_features
    d = D // block.heads
    check_exact(d, ACT_LIMIT, ACT_LIMIT)  # scores q . k
    fc1, act = block.mlp[0], block.mlp[1]
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        raise ValueError("integer prior: the MLP must use the exact (erf) GELU")
    score_scale = math.isqrt((1 << (2 * SCORE_SHIFT - 2 * (2 * ACT_FRAC - EXP_FRAC))) // d)  # 2**(S-20) / sqrt(d)
    cap = (len(exp_table()) << SCORE_SHIFT) // score_scale + 1
    check_exact(1, cap, score_scale, 1 << SCORE_SHIFT)
    return IntBlock(quantize_norm(block.norm1), quantize_linear(block.qkv, ACT_FRAC, ACT_FRAC),
                    quantize_linear(block.proj, ACT_FRAC, RES_FRAC), quantize_norm(block.norm2),
                    quantize_linear(fc1, ACT_FRAC, ACT_FRAC), quantize_linear(block.mlp[2], ACT_FRAC, RES_FRAC),
                    block.heads, float(score_scale), float(cap))


def attention(b: IntBlock, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
    """q (B, H, T, d) at positions start .. start + T - 1 and ACT_FRAC; keys/values (B, H, start + T, d) -> (B, H, T,
    d): the causal softmax-weighted mean of the values, rounded."""
    T, S = q.shape[2], keys.shape[2]
    scores = exact_matmul(q, keys.transpose(-1, -2))  # (B, H, T, S) at 2 * ACT_FRAC, |.| < d * ACT_LIMIT**2
    if T > 1:  # causal within the new positions
        visible = torch.arange(S)[None, :] <= torch.arange(start, start + T)[:, None]  # (T, S)
        scores = scores.masked_fill_(~visible, -float(1 << 50))
    diff = (scores.max(-1, keepdim=True).values - scores).clamp_(max=b.cap)  # (B, H, T, S) >= 0
    steps = shift_round_(diff.mul_(b.score_scale), float(1 << (SCORE_SHIFT - 1)), 2.0 ** -SCORE_SHIFT)
    weights = lookup(exp_table(), steps)  # at most EXP_ONE; 0 where masked
    return round_div(exact_matmul(weights, values), weights.sum(-1, keepdim=True))


def block_forward(b: IntBlock, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
                  out_from: int = 0) -> torch.Tensor:
    """Residual x (B, T, D) at RES_FRAC -> the block's output at positions out_from .. T - 1, (B, T - out_from, D);
    the keys/values of all T positions are written at start .. start + T."""
    B, T, D = x.shape
    qkv = clamp_(linear(b.qkv, layer_norm(b.norm1, x)), ACT_LIMIT)  # (B, T, 3D)
    q, k, v = qkv.view(B, T, 3, b.heads, D // b.heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, d)
    keys[:, :, start:start + T], values[:, :, start:start + T] = k, v
    if out_from:  # the earlier positions' outputs are never read (the last block): only their keys and values
        q, x, start, T = q[:, :, out_from:], x[:, out_from:], start + out_from, T - out_from
    o = attention(b, q, keys[:, :, :start + T], values[:, :, :start + T], start)  # (B, H, T, d)
    x = clamp_(linear(b.proj, o.transpose(1, 2).reshape(B, T, D)).add_(x), RES_LIMIT)  # (B, T, D)
    h = gelu(clamp_(linear(b.fc1, layer_norm(b.norm2, x)), ACT_LIMIT))  # (B, T, hidden)
    return clamp_(linear(b.fc2, h).add_(x), RES_LIMIT)


class IntegerPrior:
    """A `TilePrior` in integer arithmetic: `prefill(context)` and `step(ids, cache)` as the float prior's, but
    returning integer frequencies (B, K) that sum to PROB_SCALE, identical on every machine."""

    def __init__(self, prior: nn.Module):
        c = self.config = prior.config
        check_exact(1, EXP_ONE, ACT_LIMIT, 0)
        check_exact(c.prefix + c.num_tokens, EXP_ONE, ACT_LIMIT)  # softmax weights @ values
        self.embed = _to_int(_pow2(prior.embed.weight.detach().cpu().double().numpy(), RES_FRAC))  # (K + 2, D)
        self.pos = _to_int(_pow2(prior.pos.detach().cpu().double().numpy(), RES_FRAC))[0]  # (P + L - 1, D)
        if 2 * max(float(self.embed.abs().max()), float(self.pos.abs().max())) >= RES_LIMIT:
            raise ValueError("integer prior: embeddings too large for the residual format")
        self.blocks = [quantize_block(b) for b in prior.blocks]
        self.norm = quantize_norm(prior.norm)
        self.head = quantize_linear(prior.head, ACT_FRAC, ACT_FRAC)
        exp_table(), gelu_fine()  # built once, up front

    def _run(self, inputs: torch.Tensor, cache: IntCache, start: int, every_from: int | None = None) -> torch.Tensor:
        """Token ids (B, T) at positions start.. -> frequencies (B, K) for the token after the last one, or with
        `every_from` = j (B, T - j, K) after each of inputs j .. T - 1."""
        out_from = inputs.shape[1] - 1 if every_from is None else every_from
        x = self.embed[inputs] + self.pos[start:start + inputs.shape[1]]  # (B, T, D) at RES_FRAC
        for i, b in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block_forward(b, x, cache.keys[i], cache.values[i], start, out_from if last else 0)
        cache.length[0] = start + inputs.shape[1]
        logits = linear(self.head, layer_norm(self.norm, x))  # (B, T - out_from, K) at ACT_FRAC
        freqs = frequencies(clamp_(logits, RES_LIMIT << 4).reshape(-1, logits.shape[-1])).view(*logits.shape)
        return freqs if every_from is not None else freqs[:, -1]

    def _empty_cache(self, batch: int) -> IntCache:
        c = self.config
        shape = (batch, c.heads, c.prefix + c.num_tokens - 1, c.width // c.heads)
        return IntCache([torch.empty(shape, dtype=torch.float64) for _ in self.blocks],  # read only where written
                        [torch.empty(shape, dtype=torch.float64) for _ in self.blocks], [0])

    def score(self, context: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: context (B, 8) neighbour ids and ids (B, n), n <= L -> the frequencies of each of the n
        ids given the ones before it, (B, n, K), in one pass. Bit-identical to `prefill` then n - 1 `step`s: every
        row and position is computed by the same integer operations (a causal mask whose exp weight is exactly 0
        stands for the keys a step has not seen yet)."""
        inputs = torch.cat([context, torch.full_like(context[:, :1], self.config.bos), ids[:, :-1]], dim=1)
        return self._run(inputs, self._empty_cache(len(context)), 0, every_from=self.config.prefix - 1)

    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, IntCache]:
        """context (B, 8) neighbour ids -> frequencies of id_0 (B, K) and the cache after <bos>."""
        inputs = torch.cat([context, torch.full_like(context[:, :1], self.config.bos)], dim=1)  # (B, P)
        cache = self._empty_cache(len(context))
        return self._run(inputs, cache, 0), cache

    def step(self, ids: torch.Tensor, cache: IntCache) -> tuple[torch.Tensor, IntCache]:
        """The previous id of each tile (B,) -> frequencies of the next (B, K); the cache advances one position."""
        return self._run(ids[:, None], cache, cache.length[0]), cache
