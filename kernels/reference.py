"""Pure-torch kernels: these define the semantics the Triton kernels must match.

They also are the CPU path of the project (the `vq` quantizer and SJD decoding call them when no GPU is
present), so they are vectorised and bounded in memory rather than written as the most literal loops.

- `nearest_code`: index and distance of the nearest codebook row, euclidean or cosine, chunked over rows
  so at most `_CHUNK_ELEMENTS` scores exist at once (never a full N×K matrix for large N).
- `sjd_verify`: the accept/resample step of lossless Speculative Jacobi Decoding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 24  # scores (fp32) held at once: 64 MiB
_MAX_CHUNK_ROWS = 4096
_NORM_EPS = 1e-12  # as F.normalize


class NearestCode(NamedTuple):
    indices: torch.Tensor  # int64 (N,)
    distances: torch.Tensor  # float32 (N,): squared euclidean distance, or 1 - cos


class SJDVerifyResult(NamedTuple):
    accept_len: torch.Tensor  # int64 (B,) in [0, W]
    token: torch.Tensor  # int64 (B,): the one token sampled after the accepted drafts


# ---------------------------------------------------------------------------------------------------------------
# Nearest-code search
# ---------------------------------------------------------------------------------------------------------------


def check_nearest_code_args(z: torch.Tensor, codebook: torch.Tensor, metric: str) -> None:
    """Raise ValueError on inputs no backend accepts (shared by both backends)."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"nearest_code: metric must be 'euclidean' or 'cosine', got {metric!r}")
    if codebook.dim() != 2 or codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"nearest_code: codebook must be (K, D) with K, D > 0, got {tuple(codebook.shape)}")
    if z.dim() < 1 or z.shape[-1] != codebook.shape[1]:
        raise ValueError(f"nearest_code: z must be (..., D={codebook.shape[1]}), got {tuple(z.shape)}")
    if z.device != codebook.device:
        raise ValueError(f"nearest_code: z on {z.device} but codebook on {codebook.device}")
    for name, t in (("z", z), ("codebook", codebook)):
        if not t.is_floating_point():
            raise ValueError(f"nearest_code: {name} must be floating point, got {t.dtype}")


def code_sq_norms(codebook: torch.Tensor) -> torch.Tensor:
    """||c_k||² in fp32, (K,). Both backends use this exact expression so their scores agree bit for bit."""
    c = codebook.detach().float()
    return (c * c).sum(dim=1)


def normalize_codebook(codebook: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows in fp32 (K, D), as `F.normalize`; the cosine metric searches against these."""
    return F.normalize(codebook.detach().float(), dim=1, eps=_NORM_EPS)


def chunk_rows(num_codes: int) -> int:
    """Rows of z scored at once so that a chunk holds at most `_CHUNK_ELEMENTS` scores."""
    return max(1, min(_MAX_CHUNK_ROWS, _CHUNK_ELEMENTS // num_codes))


class ReferenceCodes(NamedTuple):
    """A codebook as the torch search multiplies with it (`prepare_reference_codes`)."""

    codes_t: torch.Tensor  # (D, K) fp32: the codes (euclidean), or the negated unit-norm codes (cosine)
    code_sq: torch.Tensor | None  # (K,) fp32 ||c||² (euclidean), None (cosine)


def prepare_reference_codes(codebook: torch.Tensor, cosine: bool) -> ReferenceCodes:
    """What `nearest_code` computes from the codebook before scoring; cacheable while the codebook is unchanged."""
    if cosine:
        return ReferenceCodes(normalize_codebook(codebook).neg_().t(), None)  # -ĉ: scores come out as -cos
    return ReferenceCodes(codebook.detach().float().t(), code_sq_norms(codebook))


@torch.no_grad()
def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, metric: str = "euclidean", prepared: ReferenceCodes | None = None
) -> NearestCode:
    """Index and distance of the nearest codebook row for each row of z.

    z (..., D) and codebook (K, D), any float dtype (computed in fp32). The search minimises a score:
    euclidean ``||c||² - 2 z·c`` (the reported distance adds ``||z||²``, clamped at 0); cosine ``ẑ·(-ĉ)`` on
    l2-normalised rows (reported distance ``1 - cos``). Ties go to the lowest index (`torch.min` over a row).
    `prepared`: `prepare_reference_codes(codebook, metric == "cosine")` computed earlier (same result, fewer
    launches). Returns NearestCode(indices int64 (...), distances float32 (...)); nothing is differentiable.
    """
    check_nearest_code_args(z, codebook, metric)
    lead_shape = z.shape[:-1]
    z = z.detach().reshape(-1, z.shape[-1])  # (N, D)
    num_rows, num_codes = z.shape[0], codebook.shape[0]
    cosine = metric == "cosine"
    codes_t, code_sq = prepared if prepared is not None else prepare_reference_codes(codebook, cosine)
    step = chunk_rows(num_codes)
    parts = [_search_chunk(z[start : start + step], codes_t, code_sq) for start in range(0, num_rows, step)]
    if len(parts) == 1:
        indices, distances = parts[0]
    else:  # no rows (an empty search) or several chunks
        indices = torch.cat([p[0] for p in parts]) if parts else z.new_empty(0, dtype=torch.int64)
        distances = torch.cat([p[1] for p in parts]) if parts else z.new_empty(0, dtype=torch.float32)
    return NearestCode(indices.reshape(lead_shape), distances.reshape(lead_shape))


def _search_chunk(z: torch.Tensor, codes_t: torch.Tensor, code_sq: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(indices (n,), distances (n,)) for a chunk of rows z (n, D) against prepared codes."""
    zc = z.float()
    if code_sq is None:  # cosine
        scores = torch.mm(F.normalize(zc, dim=1, eps=_NORM_EPS), codes_t)  # (n, K): -cos
    else:
        scores = torch.addmm(code_sq, zc, codes_t, alpha=-2.0)  # (n, K): ||c||² - 2 z·c
    best, idx = scores.min(dim=1)  # (n,), (n,): the first minimum of each row
    if code_sq is None:
        return idx, best.add_(1.0)
    return idx, best.add_((zc * zc).sum(dim=1)).clamp_(min=0.0)


# ---------------------------------------------------------------------------------------------------------------
# SJD verification
# ---------------------------------------------------------------------------------------------------------------


def check_sjd_args(
    logits: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
) -> None:
    """Raise ValueError unless the shapes are logits (B, W+1, V), draft_ids (B, W), draft_probs (B, W, V),
    u_accept (B, W), u_sample (B,) on one device."""
    if logits.dim() != 3 or logits.shape[1] < 1 or logits.shape[2] < 1:
        raise ValueError(f"sjd_verify: logits must be (B, W+1, V), got {tuple(logits.shape)}")
    B, W, V = logits.shape[0], logits.shape[1] - 1, logits.shape[2]
    expected = {
        "draft_ids": (draft_ids, (B, W)),
        "draft_probs": (draft_probs, (B, W, V)),
        "u_accept": (u_accept, (B, W)),
        "u_sample": (u_sample, (B,)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"sjd_verify: {name} must be {shape}, got {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"sjd_verify: {name} on {t.device} but logits on {logits.device}")
    if draft_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sjd_verify: draft_ids must be int32 or int64, got {draft_ids.dtype}")


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row the smallest v with cumsum(weights)[v] > u * total, total = cumsum[-1] (rows with total > 0).

    weights (B, V) ≥ 0, u (B,) in [0, 1). If rounding leaves no such v (u * total == total), the last v with
    a positive weight is returned.
    """
    cum = weights.cumsum(dim=-1)  # (B, V)
    target = u * cum[:, -1]  # (B,)
    token = torch.searchsorted(cum, target[:, None].contiguous(), right=True).squeeze(1)  # (B,)
    positions = torch.arange(weights.shape[-1], device=weights.device)
    last_positive = torch.where(weights > 0, positions, -1).amax(dim=-1)  # (B,)
    return torch.where(token >= weights.shape[-1], last_positive, token)


@torch.no_grad()
def sjd_verify(
    logits: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
) -> SJDVerifyResult:
    """Accept a prefix of the draft window and sample one more token, losslessly (speculative sampling).

    logits (B, W+1, V): the target's processed logits at the W draft positions plus one (-inf = banned; every
    row needs a finite entry). draft_ids (B, W); draft_probs (B, W, V): the distribution each draft was drawn
    from (one-hot allowed); u_accept (B, W) and u_sample (B,) uniforms in [0, 1).

    With p_i = softmax(logits[:, i]) and q_i = draft_probs[:, i]: draft i is accepted iff
    ``u_accept[i] * q_i(x_i) < p_i(x_i)`` and all earlier drafts were. n = number accepted. If n < W the token
    is drawn from norm(max(0, p_n - q_n)) (from p_n if that residual is all zero), else from p_W, by
    `inverse_cdf` with u_sample. Returns SJDVerifyResult(accept_len (B,), token (B,)), both int64.
    """
    check_sjd_args(logits, draft_ids, draft_probs, u_accept, u_sample)
    B, W = draft_ids.shape
    p = torch.softmax(logits.float(), dim=-1)  # (B, W+1, V): the one (B, W, V)-sized temporary
    rows = torch.arange(B, device=logits.device)
    if W > 0:
        ids = draft_ids.long()[..., None]  # (B, W, 1)
        p_draft = p[:, :W].gather(-1, ids).squeeze(-1)  # (B, W)
        q_draft = draft_probs.gather(-1, ids).squeeze(-1).float()  # (B, W)
        accepted = u_accept.float() * q_draft < p_draft  # (B, W)
        accept_len = accepted.long().cumprod(dim=-1).sum(dim=-1)  # (B,): length of the accepted prefix
    else:
        accept_len = torch.zeros(B, dtype=torch.int64, device=logits.device)
    p_n = p[rows, accept_len]  # (B, V)
    weights = p_n
    if W > 0:
        q_n = draft_probs[rows, accept_len.clamp(max=W - 1)].float()  # (B, V); unused where n == W
        residual = (p_n - q_n).clamp(min=0.0)
        rejected = accept_len < W
        weights = torch.where(rejected[:, None], residual, p_n)
        weights = torch.where((weights.sum(dim=-1) > 0)[:, None], weights, p_n)  # all-zero residual -> p_n
    token = inverse_cdf(weights, u_sample.float())
    return SJDVerifyResult(accept_len, token)
