"""Quantizers for 1D latent sequences: `vq` (ours), `fsq` and `lfq` (adapters over vector-quantize-pytorch).

All three take latents (B, L, D) and return a `QuantizerOutput`; all run in fp32 even under autocast.

- VQ with an l2-normalised codebook (TiTok `modeling/quantizer/quantizer.py`, ViT-VQGAN arXiv:2110.04627):
  commitment + codebook losses, straight-through gradients, and dead-code restart from batch latents. The
  nearest-code search goes through `onetok.kernels.nearest_code(..., metric="cosine")`.
- FSQ (arXiv:2309.15505) and LFQ (arXiv:2310.05737) come from `vector_quantize_pytorch`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B, L, D) straight-through in training
    indices: torch.Tensor  # (B, L) int64
    loss: torch.Tensor  # scalar, already weighted
    breakdown: dict[str, torch.Tensor]  # named, weighted parts of `loss`


def _fp32(z: torch.Tensor) -> torch.Tensor:
    return z.float()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------------------------------------------------
# VQ with an l2-normalised codebook
# --------------------------------------------------------------------------------------------------------------------


class VectorQuantizer(nn.Module):
    """Cosine-similarity VQ: z and codes are l2-normalised, nearest code by the kernels' search."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))  # (K, D)
        self.register_buffer("usage", torch.ones(codebook_size))  # EMA of per-step code counts

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.float(), dim=-1)  # (K, D)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, D) unit-norm codes."""
        return F.embedding(indices, self.normalized_codebook())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) indices of the most cosine-similar codes (ties to the lowest index)."""
        from onetok.kernels import nearest_code

        # the raw parameter: the search normalises it, and caches that while the parameter is unchanged
        indices, _ = nearest_code(z, self.codebook, metric="cosine")
        return indices

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            B, L, D = z.shape
            z = F.normalize(_fp32(z), dim=-1)  # (B, L, D)
            indices = self.nearest(z.detach().reshape(B * L, D)).reshape(B, L)
            zq = self.codes_from_indices(indices)  # (B, L, D)
            commitment = self.commitment_weight * F.mse_loss(z, zq.detach())
            codebook = self.codebook_weight * F.mse_loss(zq, z.detach())
            if self.training:
                self._restart_dead_codes(z.detach().reshape(B * L, D), indices.reshape(-1))
            quantized = z + (zq - z).detach()  # straight-through
        breakdown = {"commitment": commitment, "codebook": codebook}
        return QuantizerOutput(quantized, indices, commitment + codebook, breakdown)

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """Track an EMA of code use; codes whose use falls below the threshold restart at random batch latents.

        Under DDP the counts are summed over ranks and the new codes come from rank 0, so replicas stay identical.
        """
        if self.dead_code_threshold <= 0:
            return
        counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
        if _distributed():
            dist.all_reduce(counts)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = self.usage < self.dead_code_threshold  # (K,)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        picks = torch.randint(0, z.shape[0], (n_dead,), device=z.device)
        noise = 0.01 * torch.randn(n_dead, self.dim, device=z.device)
        new_codes = z[picks] + noise  # (n_dead, D)
        if _distributed():
            dist.broadcast(new_codes, src=0)
        self.codebook[dead] = new_codes.to(self.codebook.dtype)  # not via .data: the write must bump _version
        self.usage[dead] = 1.0


# --------------------------------------------------------------------------------------------------------------------
# FSQ and LFQ adapters
# --------------------------------------------------------------------------------------------------------------------


class FSQuantizer(nn.Module):
    """Finite scalar quantization; D = len(levels), K = prod(levels). No auxiliary loss."""

    def __init__(self, levels: list[int] | tuple[int, ...]):
        super().__init__()
        from vector_quantize_pytorch import FSQ

        self.levels = tuple(int(v) for v in levels)
        self.dim, self.codebook_size = len(self.levels), math.prod(self.levels)
        self.fsq = FSQ(levels=list(self.levels))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(indices).float()  # (B, L, D)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized, indices = self.fsq(_fp32(z))
        zero = quantized.new_zeros(())
        return QuantizerOutput(quantized, indices.long(), zero, {})


class LookupFreeQuantizer(nn.Module):
    """Lookup-free quantization: each of D = log2(K) dims is a sign bit; entropy + commitment auxiliary losses."""

    def __init__(self, dim: int, entropy_weight: float = 0.1, commitment_weight: float = 0.25):
        super().__init__()
        from vector_quantize_pytorch import LFQ

        self.dim, self.codebook_size = dim, 2**dim
        self.lfq = LFQ(dim=dim, codebook_size=2**dim, entropy_loss_weight=entropy_weight,
                       commitment_loss_weight=commitment_weight)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(indices).float()  # (B, L, D)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            out = self.lfq(_fp32(z))
        aux = out.entropy_aux_loss if self.training else out.quantized.new_zeros(())
        return QuantizerOutput(out.quantized, out.indices.long(), aux, {"lfq_aux": aux})


def build_quantizer(
    kind: str, code_dim: int, codebook_size: int, fsq_levels: tuple[int, ...], commitment_weight: float,
    codebook_weight: float, dead_code_threshold: float, lfq_entropy_weight: float,
) -> nn.Module:
    if kind == "vq":
        return VectorQuantizer(code_dim, codebook_size, commitment_weight, codebook_weight, dead_code_threshold)
    if kind == "fsq":
        return FSQuantizer(fsq_levels)
    if kind == "lfq":
        return LookupFreeQuantizer(code_dim, lfq_entropy_weight, commitment_weight)
    raise ValueError(f"unknown quantizer {kind!r} (expected vq, fsq or lfq)")
