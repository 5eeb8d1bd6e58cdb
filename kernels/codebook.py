"""Triton nearest-code search on tensor cores (semantics: `onetok.kernels.reference`).

Grid (row blocks, K splits). A program owns BLOCK_N rows of z and one contiguous range of codes. Its z tile
(BLOCK_N, BLOCK_D) is loaded once and stays in registers; the program walks its codes in BLOCK_K tiles, and
for each tile one `tl.dot` chain computes the (BLOCK_N, BLOCK_K) score block straight into an accumulator that
starts at the per-code bias:

    euclidean  score = ||c||² + z·(-2c)     codes pre-scaled by -2 on the host (exact), bias ||c||²
    cosine     score = 0 + ẑ·(-ĉ)           codebook normalised and negated on the host, z normalised here

Padded codes get bias +inf, so they can never win and need no mask on the scores. Two epilogues, both autotune
candidates: a running best per score slot ((BLOCK_N, BLOCK_K) values and tile offsets; 3 ops per score, two row
reductions at the end) or a per-tile row minimum merged into a running best per row (fewer registers). Either way
a later tile wins only with a strictly smaller score, and the lowest column at a minimum is picked explicitly, so
ties go to the lowest index. Only indices and distances leave the kernel: the N×K score matrix never exists.

Dot precision. fp16/bf16 euclidean searches with both inputs in the same dtype multiply in that dtype
(products are exact in fp32) with fp32 accumulation. Everything else runs in fp32 as a split-precision
"TF32×3" dot: x = hi + lo with hi = TF32-rounded x and lo = TF32-rounded (x - hi), and
z·c ≈ z_lo·c_hi + z_hi·c_lo + z_hi·c_hi on TF32 tensor cores, about 2⁻²² relative per product (plain TF32:
2⁻¹¹), so fp32 argmins and exact ties survive. The codes are split on the host, z once per program.

Split over K: with few row blocks (small N) the codes are cut into `split_k` ranges, one program column each;
each writes its raw best score, index and distance, and `torch.argmin` over the splits (first minimum = lowest
split = lowest index) picks the answer. Block sizes are autotuned on CUDA (`_CONFIGS`), keyed on
(N bucket, codes per split, D, metric, precision).

Every `tl.dot` is at least 16 on each axis (BLOCK_N, BLOCK_K, BLOCK_D ≥ 16), the minimum every Triton since
3.1 accepts for every dtype. The host code imports triton: import this module only after TRITON_INTERPRET is set.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from onetok.kernels.cache import PREPARED
from onetok.kernels.reference import NearestCode, check_nearest_code_args, code_sq_norms, normalize_codebook

HALF_DTYPES = (torch.float16, torch.bfloat16)
MIN_BLOCK = 16  # smallest tl.dot extent on any axis, any dtype, any Triton >= 3.1
MAX_BLOCK_D = 32  # D up to this stays in registers as one tile; larger D loops over chunks of 32
MIN_CODES_PER_SPLIT = 1024
# interpreter and explicit-size calls
DEFAULT_LAUNCH = {"BLOCK_N": 64, "BLOCK_K": 64, "ROW_MIN_PER_TILE": False, "num_warps": 4}


def _config(block_n: int, block_k: int, row_min_per_tile: bool, num_warps: int, num_stages: int = 3) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "ROW_MIN_PER_TILE": row_min_per_tile},
                         num_warps=num_warps, num_stages=num_stages)


# Autotune candidates, both epilogues (per-slot running best: fewer instructions per score, more registers; per-tile
# row minimum: fewer registers, a reduction per tile). D in chunks (D > MAX_BLOCK_D) holds the z chunks in registers
# inside the loop, so it gets unpipelined candidates of its own. None spills on sm_80 or sm_90 (see
# tests/test_kernel_compile.py); `_prune_configs` picks the ones that fit a call.
_CONFIGS = [
    _config(64, 64, False, 4),
    _config(128, 64, False, 8),  # (64, 128, 8 warps) here aborts Triton 3.1's sm_90 compiler (mma -> mma layout)
    _config(64, 64, True, 4),
    _config(128, 64, True, 4),
    _config(128, 128, True, 8),
    _config(64, 128, True, 4),
    _config(64, 64, True, 4, num_stages=1),  # chunked D
    _config(128, 64, True, 8, num_stages=1),  # chunked D
]
_TUNING_KEY = ["n_bucket", "codes_per_split", "D", "COSINE", "SPLIT_DOT"]


# ---------------------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptr, rows, cols, num_rows, num_cols, stride_row, stride_col, other):
    """A (len(rows), len(cols)) tile; out-of-range entries read as `other`."""
    mask = (rows[:, None] < num_rows) & (cols[None, :] < num_cols)
    return tl.load(ptr + rows[:, None] * stride_row + cols[None, :] * stride_col, mask=mask, other=other)


@triton.jit
def _round_tf32(x):
    """fp32 x rounded to TF32 (10 mantissa bits, ties away from zero), as PTX cvt.rna.tf32.f32."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def _z_tile(z_ptr, rows, dims, N, D, stride_zn, stride_zd, z_norm, COSINE: tl.constexpr, SPLIT_DOT: tl.constexpr):
    """The dot operands for a z tile (BLOCK_N, BLOCK_D): (hi, lo) TF32 parts, or the half tile twice."""
    z = _load_tile(z_ptr, rows, dims, N, D, stride_zn, stride_zd, 0.0)
    if COSINE:
        z = tl.div_rn(z.to(tl.float32), z_norm[:, None])  # as F.normalize
    if SPLIT_DOT:
        z = z.to(tl.float32)
        hi = _round_tf32(z)
        lo = _round_tf32(z - hi)
    else:
        hi = z
        lo = z
    return hi, lo


@triton.jit
def _dot_codes(acc, z_hi, z_lo, code_ptr, codes, dims, k_end, D, stride_cs, stride_ck, stride_cd,
               SPLIT_DOT: tl.constexpr):
    """acc += z · codesᵀ for a (BLOCK_D, BLOCK_K) slice of the pre-scaled codes (hi at code_ptr, lo one stride_cs on)."""
    c_hi = _load_tile(code_ptr, dims, codes, D, k_end, stride_cd, stride_ck, 0.0)  # (BLOCK_D, BLOCK_K)
    if SPLIT_DOT:
        c_lo = _load_tile(code_ptr + stride_cs, dims, codes, D, k_end, stride_cd, stride_ck, 0.0)
        acc = tl.dot(z_lo, c_hi, acc, input_precision="tf32")  # small terms first
        acc = tl.dot(z_hi, c_lo, acc, input_precision="tf32")
        acc = tl.dot(z_hi, c_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(z_hi, c_hi, acc)
    return acc


@triton.jit
def _row_sq_norms(z_ptr, rows, dims, N, D, stride_zn, stride_zd, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """||z||² per row (BLOCK_N,) in fp32, over D in chunks of BLOCK_D."""
    z_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        z = _load_tile(z_ptr, rows, d0 + dims, N, D, stride_zn, stride_zd, 0.0).to(tl.float32)
        z_sq += tl.sum(z * z, axis=1)
    return z_sq


@triton.jit
def _dot_codes_chunked(acc, z_ptr, code_ptr, rows, dims, codes, k_end, N, D, stride_zn, stride_zd, stride_cs,
                       stride_ck, stride_cd, z_norm, COSINE: tl.constexpr, SPLIT_DOT: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """`_dot_codes` over D in chunks of BLOCK_D, each z chunk loaded (and split) again per code tile."""
    for d0 in range(0, D, BLOCK_D):
        hi, lo = _z_tile(z_ptr, rows, d0 + dims, N, D, stride_zn, stride_zd, z_norm, COSINE, SPLIT_DOT)
        acc = _dot_codes(acc, hi, lo, code_ptr, codes, d0 + dims, k_end, D, stride_cs, stride_ck, stride_cd,
                         SPLIT_DOT)
    return acc


@triton.jit
def _merge_tile_min(acc, cols, k0, best_row, index_row, BLOCK_K: tl.constexpr):
    """Reduce a score tile to (min, lowest column at the min) per row and merge it into the running best per row."""
    tile_min = tl.min(acc, axis=1)  # (BLOCK_N,)
    tile_arg = tl.min(tl.where(acc == tile_min[:, None], cols[None, :], BLOCK_K), axis=1)
    better_row = tile_min < best_row  # strict: an earlier tile keeps a tie
    return tl.where(better_row, tile_min, best_row), tl.where(better_row, k0 + tile_arg, index_row)


@triton.jit
def _merge_slots(acc, k0, best, best_k0):
    """Keep the running best per score slot (BLOCK_N, BLOCK_K) and the tile start it was seen at; no reduction."""
    better = acc < best  # strict: an earlier tile keeps a tie
    return tl.where(better, acc, best), tl.where(better, k0, best_k0)


@triton.jit
def _store_nearest(score, index, z_sq, split, rows, N, score_ptr, index_ptr, dist_ptr, COSINE: tl.constexpr,
                   STORE_SCORE: tl.constexpr):
    """Write this split's index and distance per row (and its raw score when the splits are merged on the host)."""
    if COSINE:
        dist = score + 1.0
    else:
        dist = tl.maximum(score + z_sq, 0.0)
    out = split.to(tl.int64) * N + rows
    tl.store(index_ptr + out, index.to(tl.int64), mask=rows < N)
    tl.store(dist_ptr + out, dist, mask=rows < N)
    if STORE_SCORE:
        tl.store(score_ptr + out, score, mask=rows < N)


@triton.jit
def _nearest_code_kernel(
    z_ptr, code_ptr, bias_ptr, score_ptr, index_ptr, dist_ptr,
    N, K, D, codes_per_split, n_bucket,
    stride_zn, stride_zd, stride_cs, stride_ck, stride_cd,
    COSINE: tl.constexpr,
    SPLIT_DOT: tl.constexpr,
    STORE_SCORE: tl.constexpr,
    ONE_D_TILE: tl.constexpr,
    ROW_MIN_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # (BLOCK_N,)
    split = tl.program_id(1)
    k_start = split * codes_per_split
    k_end = tl.minimum(K, k_start + codes_per_split)
    dims = tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_K)
    # the euclidean distance adds ||z||² at the end; cosine divides z by ||z|| (as F.normalize, eps 1e-12)
    z_sq = _row_sq_norms(z_ptr, rows, dims, N, D, stride_zn, stride_zd, BLOCK_N, BLOCK_D)
    z_norm = tl.maximum(tl.sqrt_rn(z_sq), 1e-12)
    if ONE_D_TILE:  # the whole z tile stays in registers for the program's life
        z_hi, z_lo = _z_tile(z_ptr, rows, dims, N, D, stride_zn, stride_zd, z_norm, COSINE, SPLIT_DOT)
    if ROW_MIN_PER_TILE:
        best_row = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
        index_row = tl.zeros((BLOCK_N,), dtype=tl.int32)
    else:
        best = tl.full((BLOCK_N, BLOCK_K), float("inf"), dtype=tl.float32)  # per score slot, over the tiles
        best_k0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int32)  # the tile start where `best` was seen
    for k0 in range(k_start, k_end, BLOCK_K):
        codes = k0 + cols  # (BLOCK_K,)
        bias = tl.load(bias_ptr + codes, mask=codes < k_end, other=float("inf"))  # padded codes: +inf
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32) + bias[None, :]
        if ONE_D_TILE:
            acc = _dot_codes(acc, z_hi, z_lo, code_ptr, codes, dims, k_end, D, stride_cs, stride_ck, stride_cd,
                             SPLIT_DOT)
        else:
            acc = _dot_codes_chunked(acc, z_ptr, code_ptr, rows, dims, codes, k_end, N, D, stride_zn, stride_zd,
                                     stride_cs, stride_ck, stride_cd, z_norm, COSINE, SPLIT_DOT, BLOCK_D)
        if ROW_MIN_PER_TILE:
            best_row, index_row = _merge_tile_min(acc, cols, k0, best_row, index_row, BLOCK_K)
        else:
            best, best_k0 = _merge_slots(acc, k0, best, best_k0)
    if ROW_MIN_PER_TILE:
        score, index = best_row, index_row
    else:
        score = tl.min(best, axis=1)  # (BLOCK_N,)
        index = tl.min(tl.where(best == score[:, None], best_k0 + cols[None, :], K), axis=1)  # lowest index at the min
    _store_nearest(score, index, z_sq, split, rows, N, score_ptr, index_ptr, dist_ptr, COSINE, STORE_SCORE)


def _prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Autotune candidates worth timing: no row block far beyond N; the unpipelined ones exactly for chunked D."""
    args = {**named_args, **kwargs}
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= max(64, args["n_bucket"])
            and (c.num_stages > 1) == bool(args["ONE_D_TILE"])]
    return kept or configs[:1]


_tuned_kernel = triton.autotune(configs=_CONFIGS, key=_TUNING_KEY, prune_configs_by={"early_config_prune": _prune_configs})(
    _nearest_code_kernel
)


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 x -> (hi, lo): hi = x rounded to TF32, lo = (x - hi) rounded to TF32 (the kernel's `_round_tf32`)."""

    def round_tf32(t: torch.Tensor) -> torch.Tensor:
        return ((t.contiguous().view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)

    hi = round_tf32(x.float())
    return hi, round_tf32(x.float() - hi)


def prepare_codes(codebook: torch.Tensor, cosine: bool, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (P, K, D), bias (K,)): the pre-scaled codes, as P = 2 TF32 parts (hi, lo) or P = 1 half tensor,
    and the accumulator's start per code (||c||², or 0 for cosine)."""
    codebook = codebook.detach()
    if cosine:
        scaled = -normalize_codebook(codebook)  # (K, D) fp32
        bias = scaled.new_zeros(scaled.shape[0])
    else:
        scaled = -2.0 * (codebook if half else codebook.float())  # exact: a power of two
        bias = code_sq_norms(codebook)  # (K,) fp32
    if half:
        return scaled.contiguous()[None], bias
    return torch.stack(split_tf32(scaled)), bias


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def split_count(num_rows: int, num_codes: int, multiprocessors: int, block_n: int = 128) -> int:
    """K splits so that about two programs run per multiprocessor, each split keeping ≥ MIN_CODES_PER_SPLIT codes."""
    row_blocks = max(1, triton.cdiv(num_rows, block_n))
    if row_blocks >= multiprocessors:
        return 1
    return max(1, min(triton.cdiv(2 * multiprocessors, row_blocks), num_codes // MIN_CODES_PER_SPLIT))


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "euclidean",
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
    split_k: int | None = None,
    row_min_per_tile: bool | None = None,
    num_warps: int | None = None,
) -> NearestCode:
    """Triton nearest-code search; same contract as `reference.nearest_code`. The prepared codes
    (`prepare_codes`) are cached while the codebook tensor is unchanged (`onetok.kernels.cache`).

    Launch settings: block sizes (powers of two ≥ 16), the epilogue (`row_min_per_tile`), `num_warps` and
    `split_k` are autotuned / chosen on CUDA when all are None; otherwise (and in the interpreter) the missing ones
    come from `DEFAULT_LAUNCH`. Tests shrink the blocks so that small inputs span many tiles.
    """
    check_nearest_code_args(z, codebook, metric)
    lead_shape = z.shape[:-1]
    z = z.detach().reshape(-1, z.shape[-1])  # (N, D); a view when possible, strides are passed through
    num_rows, (num_codes, dim) = z.shape[0], codebook.shape
    cosine = metric == "cosine"
    half = (not cosine) and z.dtype in HALF_DTYPES and codebook.dtype == z.dtype
    if not half and z.dtype not in (torch.float32, *HALF_DTYPES):
        z = z.float()
    codes, bias = PREPARED.get(codebook, ("triton", cosine, half), lambda c: prepare_codes(c, cosine, half))
    block_d = block_d or min(MAX_BLOCK_D, max(MIN_BLOCK, triton.next_power_of_2(dim)))
    for name, value in (("block_n", block_n), ("block_k", block_k), ("block_d", block_d)):
        if value is not None and (value < MIN_BLOCK or value & (value - 1)):
            raise ValueError(f"nearest_code: {name} must be a power of two >= {MIN_BLOCK}, got {value}")
    splits = max(1, min(split_k or split_count(num_rows, num_codes, _multiprocessors(z.device)), num_codes))
    codes_per_split = triton.cdiv(num_codes, splits)
    splits = triton.cdiv(num_codes, codes_per_split)
    scores = torch.empty(splits, num_rows, dtype=torch.float32, device=z.device) if splits > 1 else bias[:1]
    indices = torch.empty(splits, num_rows, dtype=torch.int64, device=z.device)
    distances = torch.empty(splits, num_rows, dtype=torch.float32, device=z.device)
    if num_rows > 0:
        args = (z, codes, bias, scores, indices, distances,
                num_rows, num_codes, dim, codes_per_split, triton.next_power_of_2(num_rows),
                z.stride(0), z.stride(1), codes.stride(0), codes.stride(1), codes.stride(2))
        flags = dict(COSINE=cosine, SPLIT_DOT=not half, STORE_SCORE=splits > 1, ONE_D_TILE=dim <= block_d,
                     BLOCK_D=block_d)
        given = {"BLOCK_N": block_n, "BLOCK_K": block_k, "ROW_MIN_PER_TILE": row_min_per_tile, "num_warps": num_warps}
        if _interpreting() or any(v is not None for v in given.values()):
            launch = {k: DEFAULT_LAUNCH[k] if v is None else v for k, v in given.items()}
            grid = (triton.cdiv(num_rows, launch["BLOCK_N"]), splits)
            _nearest_code_kernel[grid](*args, **flags, **launch, num_stages=3 if flags["ONE_D_TILE"] else 1)
        else:
            _tuned_kernel[lambda meta: (triton.cdiv(num_rows, meta["BLOCK_N"]), splits)](*args, **flags)
    if splits > 1:  # the tiny reduction: first minimum over the splits = lowest index
        pick = scores.argmin(dim=0, keepdim=True)  # (1, N)
        indices, distances = indices.gather(0, pick), distances.gather(0, pick)
    return NearestCode(indices.reshape(lead_shape), distances.reshape(lead_shape))
