"""Codebook statistics: the token counts reconstructions are measured at, and codebook health (usage, perplexity,
dead codes, and the per-position entropy of the ids, i.e. the rate a per-position entropy coder would reach). PSNR
is `onetok.metrics.psnr`.

Codebook numbers are computed from counts, so a distributed run sums the counts over ranks (one all-reduce) and gets
exactly the numbers of a single process on the same data.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def token_counts(num_latent_tokens: int) -> list[int]:
    """The prefix lengths at which reconstructions are measured: 1, 2, 4, ..., L (L also when not a power of two)."""
    counts = [2**i for i in range(num_latent_tokens.bit_length()) if 2**i <= num_latent_tokens]
    return counts if counts[-1] == num_latent_tokens else counts + [num_latent_tokens]


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in `indices` (any shape) -> (K,) int64."""
    return torch.bincount(indices.flatten().long(), minlength=codebook_size)


def position_code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs at each position of ids (B, L) -> (L, K) int64."""
    B, L = indices.shape
    flat = indices.long() + codebook_size * torch.arange(L, device=indices.device)  # (B, L): one bin per (l, code)
    return torch.bincount(flat.flatten(), minlength=L * codebook_size).view(L, codebook_size)


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of the codebook used at least once, from counts (K,)."""
    return float((counts > 0).float().mean())


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of the distribution(s) in counts (..., K) -> (...); 0 for an all-zero row."""
    p = counts.double() / counts.double().sum(dim=-1, keepdim=True).clamp(min=1)
    return -(p * torch.log2(torch.where(p > 0, p, 1.0))).sum(dim=-1)


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution from counts (K,): K for uniform use, 1 for a single code."""
    return float(2 ** entropy_bits(counts))


class CodebookHealth(NamedTuple):
    """Codebook numbers of one quantizer over a set of images (plug-in estimates from the observed ids)."""

    codebook_size: int  # K
    usage: float  # fraction of the K codes used at least once, over all positions
    perplexity: float  # 2 ** entropy of the code distribution pooled over positions (K at best)
    dead_codes: int  # codes never used
    entropy_bits: list[float]  # per position l: entropy of the ids at l, bits (a per-position static coder's rate)
    fixed_bits: float  # log2 K: the bits per id without entropy coding

    @property
    def bits_per_token(self) -> float:
        """Mean per-position entropy: bits per id of a per-position entropy coder."""
        return sum(self.entropy_bits) / len(self.entropy_bits)

    def prefix_bits(self, k: int) -> float:
        """Bits for the first k ids of an image under the per-position model."""
        return sum(self.entropy_bits[:k])

    def as_dict(self, ks: list[int]) -> dict:
        return {
            "codebook_size": self.codebook_size, "usage": self.usage, "perplexity": self.perplexity,
            "dead_codes": self.dead_codes, "fixed_bits_per_token": self.fixed_bits,
            "entropy_bits_per_token": self.bits_per_token,
            "entropy_bits_per_position": self.entropy_bits,
            "prefix_bits": {str(k): self.prefix_bits(k) for k in ks},
        }


def codebook_health(position_counts: torch.Tensor) -> CodebookHealth:
    """Codebook health from per-position code counts (L, K) (summed over ranks in a distributed run)."""
    counts = position_counts.sum(dim=0)  # (K,)
    K = position_counts.shape[1]
    return CodebookHealth(
        codebook_size=K,
        usage=codebook_usage(counts),
        perplexity=perplexity(counts),
        dead_codes=int((counts == 0).sum()),
        entropy_bits=entropy_bits(position_counts).tolist(),
        fixed_bits=math.log2(K),
    )
