"""Kernels: fused nearest-code search and SJD verification, each with a pure-torch reference.

Backend choice per call: an explicit ``backend="triton"|"torch"`` wins; with ``backend="auto"`` the environment
variable ``ONETOK_KERNEL_BACKEND=triton|torch`` decides if set, else Triton for CUDA tensors and torch otherwise --
except that a nearest-code search of at most `TORCH_SEARCH_MAX_SCORES` scores runs the torch search (there the
kernel's launch costs more than the search; docs/kernels.md, "Which path runs").
The Triton backend also runs on CPU tensors under ``TRITON_INTERPRET=1`` (set it before this package first
launches a kernel; the tests do).

The Triton implementations, `onetok.kernels.codebook` (nearest code) and `onetok.kernels.sjd_triton` (SJD verify), import
triton; they are loaded on first use -- a call that picks the Triton backend, or the attribute itself (a module
`__getattr__`, PEP 562) -- so importing `onetok.kernels` is cheap and works without Triton.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from onetok.kernels import reference
from onetok.kernels.cache import PREPARED
from onetok.kernels.reference import NearestCode, SJDVerifyResult

__all__ = ["TORCH_SEARCH_MAX_SCORES", "NearestCode", "SJDVerifyResult", "nearest_code", "resolve_backend",
           "search_backend", "sjd_verify"]

BACKEND_ENV = "ONETOK_KERNEL_BACKEND"
_BACKENDS = ("triton", "torch")
TRITON_MODULES = ("codebook", "sjd_triton")
# Searches of at most this many scores (rows of z × codes) run the torch search even on CUDA, unless a backend is
# asked for: the value sits between the sizes where the kernel lost to addmm+argmin and where it won on an H200
# (docs/benchmarks.md, "The GPU check on an H200"). `make gpu-check` times both paths on either side of it.
TORCH_SEARCH_MAX_SCORES = 1 << 26


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def __getattr__(name: str) -> ModuleType:
    """The Triton modules (`TRITON_MODULES`), imported on first access."""
    if name in TRITON_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """'triton' or 'torch' for a call with `backend` on data living where `tensor` lives."""
    if backend not in ("auto", *_BACKENDS):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV, "").strip().lower()
        if forced:
            if forced not in _BACKENDS:
                raise ValueError(f"{BACKEND_ENV} must be 'triton' or 'torch', got {forced!r}")
            backend = forced
        else:
            backend = "triton" if tensor.is_cuda and _triton_importable() else "torch"
    if backend == "triton" and not (tensor.is_cuda or _interpreting()):
        raise RuntimeError(
            f"the triton backend needs CUDA tensors (got {tensor.device}) or TRITON_INTERPRET=1 set before import"
        )
    return backend


def search_backend(backend: str, z: torch.Tensor, num_codes: int) -> str:
    """The backend a `nearest_code` call runs: `resolve_backend`, except that the default choice (no explicit
    backend, no environment override) runs the torch search for searches of at most `TORCH_SEARCH_MAX_SCORES`."""
    chosen = resolve_backend(backend, z)
    if chosen == "triton" and backend == "auto" and not os.environ.get(BACKEND_ENV, "").strip():
        rows = z.numel() // max(1, z.shape[-1]) if z.dim() else 0
        if rows * num_codes <= TORCH_SEARCH_MAX_SCORES:
            return "torch"
    return chosen


def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, metric: str = "euclidean", backend: str = "auto"
) -> NearestCode:
    """Nearest codebook row per row of z (..., D); codebook (K, D).

    Returns NearestCode(indices int64 (...), distances float32 (...)): squared euclidean distance, or 1 - cos
    for ``metric="cosine"``. Ties go to the lowest index. fp32/fp16/bf16 inputs, fp32 accumulation.
    No gradient flows through either output. The codebook's prepared form is cached while the tensor is unchanged
    (`onetok.kernels.cache`); `search_backend` says which backend runs.
    """
    if search_backend(backend, z, codebook.shape[0] if codebook.dim() == 2 else 0) == "triton":
        return __getattr__("codebook").nearest_code(z, codebook, metric)
    reference.check_nearest_code_args(z, codebook, metric)
    cosine = metric == "cosine"
    prepared = PREPARED.get(codebook, ("torch", cosine), lambda c: reference.prepare_reference_codes(c, cosine))
    return reference.nearest_code(z, codebook, metric, prepared=prepared)


def sjd_verify(
    logits: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    backend: str = "auto",
) -> SJDVerifyResult:
    """Speculative-decoding verify step: SJDVerifyResult(accept_len (B,) int64 in [0, W], token (B,) int64).

    logits (B, W+1, V) processed target logits (-inf = banned), draft_ids (B, W), draft_probs (B, W, V) the
    draft distributions, u_accept (B, W) and u_sample (B,) uniforms in [0, 1). See `reference.sjd_verify`.
    """
    if resolve_backend(backend, logits) == "triton":
        return __getattr__("sjd_triton").sjd_verify(logits, draft_ids, draft_probs, u_accept, u_sample)
    return reference.sjd_verify(logits, draft_ids, draft_probs, u_accept, u_sample)

