"""Reconstruction and codebook metrics: PSNR, code usage and perplexity."""

from __future__ import annotations

import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images (B, C, H, W) in [0, 1] -> (B,). Identical images give +inf."""
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(1.0 / mse)


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in `indices` (any shape) -> (K,) int64."""
    return torch.bincount(indices.flatten().long(), minlength=codebook_size)


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of the codebook used at least once, from counts (K,)."""
    return float((counts > 0).float().mean())


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution from counts (K,): K for uniform use, 1 for a single code."""
    p = counts.double() / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())
