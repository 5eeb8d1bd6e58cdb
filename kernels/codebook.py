"""Triton nearest-code search and code gather (semantics: `onetok.kernels.reference`).

One program owns BLOCK_N rows of z. It walks the codebook in BLOCK_K tiles; for each tile it computes the
(BLOCK_N, BLOCK_K) score block in registers (a `tl.dot` over D, BLOCK_D at a time, fp32 accumulation), takes
the tile's row minimum and merges it into a running (best score, best index) pair per row. Only N indices
and N distances are written: the N×K score matrix never exists in memory.

Scores, minimised: euclidean ``||c||² - 2 z·c`` with ``||c||²`` precomputed on the host (K floats);
cosine ``-ẑ·ĉ`` with the codebook normalised on the host (K×D floats) and z normalised in the kernel.
Ties: `tl.min(..., return_indices_tie_break_left=True)` picks the leftmost column of a tile, and a later
tile replaces the running best only when strictly smaller, so the lowest index wins, as `torch.argmin`.
Any N, K, D: every load is masked; padded codes score +inf, padded D columns load as 0.

The host code imports triton at module import: import this module only after TRITON_INTERPRET is set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from onetok.kernels.reference import (
    NearestCode,
    check_nearest_code_args,
    code_sq_norms,
    normalize_codebook,
)

_HALF_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _load_tile(ptr, rows, cols, num_rows, num_cols, stride_row, stride_col):
    """A (len(rows), len(cols)) tile; out-of-range entries read as 0."""
    mask = (rows[:, None] < num_rows) & (cols[None, :] < num_cols)
    return tl.load(ptr + rows[:, None] * stride_row + cols[None, :] * stride_col, mask=mask, other=0.0)


@triton.jit
def _nearest_code_kernel(
    z_ptr, code_ptr, code_sq_ptr, index_ptr, dist_ptr,
    N, K, D,
    stride_zn, stride_zd, stride_ck, stride_cd,
    COSINE: tl.constexpr,
    HALF_DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    dims = tl.arange(0, BLOCK_D)

    # ||z||² per row (fp32): the euclidean distance adds it at the end; cosine divides z by ||z||.
    z_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        z = _load_tile(z_ptr, rows, d0 + dims, N, D, stride_zn, stride_zd).to(tl.float32)
        z_sq += tl.sum(z * z, axis=1)
    z_norm = tl.maximum(tl.sqrt_rn(z_sq), 1e-12)  # as F.normalize (eps = reference._NORM_EPS)

    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        dot = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            z = _load_tile(z_ptr, rows, d0 + dims, N, D, stride_zn, stride_zd)  # (BLOCK_N, BLOCK_D)
            c = _load_tile(code_ptr, codes, d0 + dims, K, D, stride_ck, stride_cd)  # (BLOCK_K, BLOCK_D)
            if HALF_DOT:  # fp16/bf16 products are exact in fp32: tensor cores, fp32 accumulation
                dot = tl.dot(z, tl.trans(c), dot)
            else:
                z = z.to(tl.float32)
                if COSINE:
                    z = tl.div_rn(z, z_norm[:, None])
                dot = tl.dot(z, tl.trans(c.to(tl.float32)), dot, input_precision="ieee")
        if COSINE:
            score = -dot  # (BLOCK_N, BLOCK_K)
        else:
            c_sq = tl.load(code_sq_ptr + codes, mask=codes < K, other=0.0)  # (BLOCK_K,)
            score = c_sq[None, :] - 2.0 * dot
        score = tl.where(codes[None, :] < K, score, float("inf"))
        tile_best, tile_arg = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best < best  # strict: an earlier tile keeps a tie
        best = tl.where(better, tile_best, best)
        best_index = tl.where(better, k0 + tile_arg.to(tl.int64), best_index)

    if COSINE:
        dist = best + 1.0
    else:
        dist = tl.maximum(best + z_sq, 0.0)
    tl.store(index_ptr + rows, best_index, mask=rows < N)
    tl.store(dist_ptr + rows, dist, mask=rows < N)


@triton.jit
def _gather_kernel(
    code_ptr, index_ptr, out_ptr,
    N, D,
    stride_ck, stride_cd, stride_on, stride_od,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    index = tl.load(index_ptr + rows, mask=rows < N, other=0).to(tl.int64)  # (BLOCK_N,)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + dims
        mask = (rows[:, None] < N) & (cols[None, :] < D)
        codes = tl.load(code_ptr + index[:, None] * stride_ck + cols[None, :] * stride_cd, mask=mask)
        tl.store(out_ptr + rows[:, None] * stride_on + cols[None, :] * stride_od, codes, mask=mask)


def _block_d(dim: int, half_dot: bool) -> int:
    """Padded D chunk: a power of two ≤ 64, at least 16 for tensor-core dots and 8 for the fp32 FMA dot
    (padding is wasted work: D = 8 runs 8 FMAs per score, not 16)."""
    return min(64, max(16 if half_dot else 8, triton.next_power_of_2(dim)))


def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "euclidean",
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
    num_warps: int = 4,
) -> NearestCode:
    """Triton nearest-code search; same contract as `reference.nearest_code`. Block sizes (powers of two; ≥ 16
    except block_d ≥ 8 for fp32) are launch settings only; tests shrink them to exercise many tiles."""
    check_nearest_code_args(z, codebook, metric)
    lead_shape = z.shape[:-1]
    z = z.detach().reshape(-1, z.shape[-1])  # (N, D); a view when possible, strides are passed through
    num_rows, num_codes = z.shape[0], codebook.shape[0]
    dim = codebook.shape[1]
    cosine = metric == "cosine"
    half_dot = (not cosine) and z.dtype in _HALF_DTYPES and codebook.dtype == z.dtype
    if cosine:
        codes = normalize_codebook(codebook)  # (K, D) fp32 unit rows
        code_sq = codes.new_empty(1)  # unused
    else:
        codes = codebook.detach() if (half_dot or codebook.dtype == torch.float32) else codebook.detach().float()
        code_sq = code_sq_norms(codebook)  # (K,)
    if not half_dot and z.dtype not in (torch.float32, *_HALF_DTYPES):
        z = z.float()
    indices = torch.empty(num_rows, dtype=torch.int64, device=z.device)
    distances = torch.empty(num_rows, dtype=torch.float32, device=z.device)
    if num_rows > 0:
        block_n = block_n or (128 if half_dot else 64)
        block_k = block_k or 64
        block_d = block_d or _block_d(dim, half_dot)
        grid = (triton.cdiv(num_rows, block_n),)
        _nearest_code_kernel[grid](
            z, codes, code_sq, indices, distances,
            num_rows, num_codes, dim,
            z.stride(0), z.stride(1), codes.stride(0), codes.stride(1),
            COSINE=cosine, HALF_DOT=half_dot,
            BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=num_warps,
        )
    return NearestCode(indices.reshape(lead_shape), distances.reshape(lead_shape))


def gather_codes(
    codebook: torch.Tensor, indices: torch.Tensor, block_n: int = 64, block_d: int | None = None
) -> torch.Tensor:
    """Triton gather: codebook (K, D), indices (...) int32/int64 in [0, K) (not checked) -> (..., D)."""
    if codebook.dim() != 2:
        raise ValueError(f"gather_codes: codebook must be (K, D), got {tuple(codebook.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"gather_codes: indices must be int32 or int64, got {indices.dtype}")
    flat = indices.reshape(-1)  # (N,)
    num_rows, dim = flat.shape[0], codebook.shape[1]
    out = torch.empty(num_rows, dim, dtype=codebook.dtype, device=codebook.device)  # (N, D)
    if num_rows > 0:
        block_d = block_d or min(128, max(16, triton.next_power_of_2(dim)))
        grid = (triton.cdiv(num_rows, block_n),)
        _gather_kernel[grid](
            codebook, flat, out, num_rows, dim,
            codebook.stride(0), codebook.stride(1), out.stride(0), out.stride(1),
            BLOCK_N=block_n, BLOCK_D=block_d,
        )
    return out.reshape(*indices.shape, dim)
