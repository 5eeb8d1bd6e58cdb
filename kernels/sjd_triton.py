"""Triton SJD verification: one program per batch row, streaming over V (semantics: `reference.sjd_verify`).

Per row b, with p_i = softmax(logits[b, i]) and q_i = draft_probs[b, i]:
1. Accept loop over the W drafts. For draft i: two passes over V give the softmax max m_i and normaliser s_i,
   then p_i(x_i) = exp(l_i(x_i) - m_i) / s_i is one load. Accept iff u_accept[i] * q_i(x_i) < p_i(x_i); the
   first rejection stops the loop (later drafts cost nothing).
2. Sample at position n (the number accepted). Weights w_v are max(0, p_n(v) - q_n(v)) if n < W, else p_n(v)
   (and p_n(v) again when the residual is all zero). One pass scans the weights block by block
   (``carry + tl.cumsum``) to get the total; a second, identical scan finds the smallest v whose running sum
   exceeds u_sample * total. Both scans run the same operations, so the total is exactly the final running sum.

No (B, W, V) temporary is allocated at all: p and the residual are recomputed from the logits where needed,
which costs O((2W + 5) V) reads per row, against a single (B, W+1, V) softmax for the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from onetok.kernels.reference import SJDVerifyResult, check_sjd_args


@triton.jit
def _softmax_stats(row_ptr, V, stride_v, BLOCK_V: tl.constexpr):
    """Max m and normaliser s = sum exp(l - m) of one logits row (fp32)."""
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(row_ptr + (v0 + offs) * stride_v, mask=v0 + offs < V, other=float("-inf")).to(tl.float32)
        m = tl.maximum(m, tl.max(x, axis=0))
    s = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(row_ptr + (v0 + offs) * stride_v, mask=v0 + offs < V, other=float("-inf")).to(tl.float32)
        s += tl.sum(tl.exp(x - m), axis=0)
    return m, s


@triton.jit
def _weights(logit_row, q_row, v, V, m, s, use_q, stride_lv, stride_qv):
    """Sampling weights at positions v (BLOCK_V,): max(0, p - q) if use_q (int32 0/1) else p; 0 past V."""
    valid = v < V
    p = tl.exp(tl.load(logit_row + v * stride_lv, mask=valid, other=float("-inf")).to(tl.float32) - m) / s
    q_valid = valid & (tl.zeros_like(v) + use_q > 0)  # explicit broadcast: the interpreter rejects scalar & vector
    q = tl.load(q_row + v * stride_qv, mask=q_valid, other=0.0).to(tl.float32)
    return tl.where(use_q > 0, tl.maximum(p - q, 0.0), p)


@triton.jit
def _weights_total(logit_row, q_row, V, m, s, use_q, stride_lv, stride_qv, BLOCK_V: tl.constexpr):
    """The final running sum of the block scan (identical arithmetic to the search in `_sjd_verify_kernel`)."""
    offs = tl.arange(0, BLOCK_V)
    carry = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        w = _weights(logit_row, q_row, v0 + offs, V, m, s, use_q, stride_lv, stride_qv)
        carry = tl.max(carry + tl.cumsum(w, axis=0), axis=0)
    return carry


@triton.jit
def _sjd_verify_kernel(
    logits_ptr, draft_ids_ptr, draft_probs_ptr, u_accept_ptr, u_sample_ptr, accept_len_ptr, token_ptr,
    W, V,
    stride_lb, stride_lw, stride_lv,
    stride_ib, stride_iw,
    stride_qb, stride_qw, stride_qv,
    stride_ab, stride_aw,
    stride_sb,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    logit_rows = logits_ptr + b * stride_lb
    q_rows = draft_probs_ptr + b * stride_qb

    # 1. accepted prefix length n
    n = tl.full((), 0, dtype=tl.int32)
    alive = tl.full((), 1, dtype=tl.int32)
    for i in range(W):
        if alive != 0:
            m, s = _softmax_stats(logit_rows + i * stride_lw, V, stride_lv, BLOCK_V)
            x = tl.load(draft_ids_ptr + b * stride_ib + i * stride_iw).to(tl.int64)
            p_x = tl.exp(tl.load(logit_rows + i * stride_lw + x * stride_lv).to(tl.float32) - m) / s
            q_x = tl.load(q_rows + i * stride_qw + x * stride_qv).to(tl.float32)
            u = tl.load(u_accept_ptr + b * stride_ab + i * stride_aw).to(tl.float32)
            if u * q_x < p_x:
                n += 1
            else:
                alive = 0

    # 2. one token from the residual (n < W) or from p_W (n == W)
    logit_row = logit_rows + n * stride_lw
    q_row = q_rows + tl.minimum(n, W - 1) * stride_qw  # read only where use_q
    m, s = _softmax_stats(logit_row, V, stride_lv, BLOCK_V)
    use_q = (n < W).to(tl.int32)
    total = _weights_total(logit_row, q_row, V, m, s, use_q, stride_lv, stride_qv, BLOCK_V)
    if total <= 0.0:  # residual all zero: fall back to p_n
        use_q = use_q * (total > 0.0).to(tl.int32)
        total = _weights_total(logit_row, q_row, V, m, s, use_q, stride_lv, stride_qv, BLOCK_V)
    target = tl.load(u_sample_ptr + b * stride_sb).to(tl.float32) * total

    offs = tl.arange(0, BLOCK_V)
    token = tl.full((), 0, dtype=tl.int32) + V
    last_positive = tl.full((), -1, dtype=tl.int32)
    carry = tl.zeros((), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        v = v0 + offs
        w = _weights(logit_row, q_row, v, V, m, s, use_q, stride_lv, stride_qv)
        running = carry + tl.cumsum(w, axis=0)
        carry = tl.max(running, axis=0)
        token = tl.minimum(token, tl.min(tl.where((running > target) & (v < V), v, V), axis=0))
        last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0.0, v, -1), axis=0))
    token = tl.where(token >= V, last_positive, token)  # u * total rounded up to total
    tl.store(accept_len_ptr + b, n.to(tl.int64))
    tl.store(token_ptr + b, token.to(tl.int64))


def sjd_verify(
    logits: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    block_v: int = 1024,
    num_warps: int = 4,
) -> SJDVerifyResult:
    """Triton SJD verify, one launch of B programs; same contract as `reference.sjd_verify`."""
    check_sjd_args(logits, draft_ids, draft_probs, u_accept, u_sample)
    B, W1, V = logits.shape
    W = W1 - 1
    accept_len = torch.empty(B, dtype=torch.int64, device=logits.device)
    token = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B == 0:
        return SJDVerifyResult(accept_len, token)
    block_v = min(block_v, max(16, triton.next_power_of_2(V)))
    _sjd_verify_kernel[(B,)](
        logits, draft_ids, draft_probs, u_accept, u_sample, accept_len, token,
        W, V,
        logits.stride(0), logits.stride(1), logits.stride(2),
        draft_ids.stride(0), draft_ids.stride(1),
        draft_probs.stride(0), draft_probs.stride(1), draft_probs.stride(2),
        u_accept.stride(0), u_accept.stride(1),
        u_sample.stride(0),
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return SJDVerifyResult(accept_len, token)
