"""The transformer blocks of the tokenizer's encoder and decoder: a pre-norm ViT block with SDPA attention.

The parameter names, shapes, LayerNorm eps and initialisation order are those of timm's `Block`
(`timm/models/vision_transformer.py`, with qkv bias, no layer scale, no drop path), so checkpoints trained with it
load unchanged; timm itself is not imported (it costs ~2 s at start-up). Beyond timm's block: the last block of a
stack (or its last n, the read-out blocks) computes only the rows that are read out, and at inference GELU and the
residual adds run in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), then GELU or + residual. Without autograd both happen in place on the fresh
    output (no extra allocation, one pass less)."""
    out = F.linear(x, weight, bias)
    in_place = not torch.is_grad_enabled()
    if gelu:
        out = torch.ops.aten.gelu_(out) if in_place else F.gelu(out)
    if residual is not None:  # (in place only where it keeps the residual stream's dtype, e.g. fp32 under autocast)
        out = out.add_(residual) if in_place and out.dtype == residual.dtype else residual + out
    return out


class Attention(nn.Module):
    """Multi-head self-attention with SDPA; timm's `Attention` parameters (qkv, q_norm/k_norm, proj)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def attend(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Normalised tokens x (B, N, D) -> the heads' outputs (B, n, D) before `proj`, for the query rows `rows`
        (default all N) over keys and values from all N."""
        B, N, D = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        if rows is None:
            q, k, v = linear(x, w, b).view(B, N, 3, self.heads, D // self.heads).unbind(2)  # (B, N, H, Dh) each
        else:
            q = linear(x[:, rows], w[:D], b[:D]).unflatten(-1, (self.heads, D // self.heads))  # (B, n, H, Dh)
            k, v = linear(x, w[D:], b[D:]).view(B, N, 2, self.heads, D // self.heads).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, n, Dh)
        return out.transpose(1, 2).flatten(2)  # (B, n, D): a view on CPU (SDPA returns (B, n, H, Dh) memory)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's `Mlp` parameters)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(residual +) fc2(gelu(fc1(x)))."""
        hidden = linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return linear(hidden, self.fc2.weight, self.fc2.bias, residual=residual)


class Block(nn.Module):
    """Pre-norm ViT block, x + attn(norm1(x)), then + mlp(norm2(x)): timm's `Block` (LayerNorm eps 1e-6, qkv
    bias, no layer scale or drop path) with the same parameter names, shapes and initialisation order."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D), or only the output rows `rows` (B, n, D) (keys and values still from all N)."""
        heads = self.attn.attend(self.norm1(x), rows)  # (B, n, D)
        x = x if rows is None else x[:, rows]
        x = linear(heads, self.attn.proj.weight, self.attn.proj.bias, residual=x)  # x + proj(heads)
        return self.mlp(self.norm2(x), residual=x)


class Blocks(nn.Sequential):
    """A stack of `Block`s (state-dict keys blocks.0.*, blocks.1.*, ...). With `rows` (the rows that are read out, a
    contiguous slice), the last `readout` blocks update only those rows: the other rows stop one block
    earlier and serve the read-out blocks as a fixed memory of keys and values (their queries, projections and MLP
    are skipped). readout=1 is the plain stack (only the last block's unread rows are skipped, which changes
    nothing); a larger readout is a cheaper model, the other rows' stream ending early (a Perceiver-style read-out,
    arXiv:2107.14795)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, qk_norm: bool, readout: int = 1):
        super().__init__(*[Block(width, heads, mlp_ratio, qk_norm) for _ in range(depth)])
        if not 1 <= readout <= depth:
            raise ValueError(f"readout blocks must be in 1..{depth}, got {readout}")
        self.readout = readout

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D), or with `rows` only those rows (B, n, D)."""
        blocks = list(self)
        if rows is None:
            if self.readout > 1:
                raise ValueError("a stack with read-out blocks needs the rows that are read out")
            for block in blocks:
                x = block(x)
            return x
        first = len(blocks) - self.readout
        for block in blocks[:first]:
            x = block(x)
        for block in blocks[first:-1]:
            x = _put_rows(x, rows, block(x, rows))  # (B, N, D): updated rows, the memory rows as they were
        return blocks[-1](x, rows)  # (B, n, D)


def _put_rows(x: torch.Tensor, rows: slice, values: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) with x[:, rows] replaced by values (B, n, D), out of place; `rows` contiguous."""
    start, stop, _ = rows.indices(x.shape[1])
    return torch.cat([x[:, :start], values, x[:, stop:]], dim=1)
