"""The optimiser recipe every training system shares: AdamW with weight decay on weight matrices only, and a linear
warm-up followed by a cosine decay of the learning rate (per optimiser step, i.e. per batch)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def decay_groups(module: nn.Module, weight_decay: float, exempt: Iterable[str] = ()) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices (ndim >= 2) except those whose name contains any of
    `exempt` (embeddings, learned tokens, position tables, codebooks); none on biases and norms."""
    exempt = tuple(exempt)
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and not any(e in name for e in exempt) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_warmup_cosine(module: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                        warmup_steps: int, total_steps: int, min_ratio: float, exempt: Iterable[str] = ()) -> dict:
    """Lightning's `configure_optimizers` answer: AdamW over `decay_groups` with the per-step schedule."""
    optimizer = torch.optim.AdamW(decay_groups(module, weight_decay, exempt), lr=lr, betas=tuple(betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, max(1, total_steps), min_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
