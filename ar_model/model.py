"""A Llama-style decoder over the shared vocabulary: RMSNorm, SwiGLU, rotary positions, SDPA attention, KV cache.

References: Touvron et al. 2023 (LLaMA), meta-llama/llama `llama/model.py`; Su et al. 2021 (RoPE).

The KV cache keeps one row per sequence with its own `starts` (slots before it are left padding) and
`lengths` (slots filled), so a batch of prompts of different lengths can be decoded together, and speculative
decoding can roll each row back to its own accepted prefix by lowering `lengths`. Its shapes are static and every
update is in place, so a cached forward pass has no host sync and no data-dependent shape (CUDA graphs,
`torch.compile(mode="reduce-overhead")`). In bf16 the RoPE tables and the logits stay float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ARConfig:
    vocab_size: int = 0  # set from the Vocab: `Vocab.size`
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (no grouped-query attention)
    mlp_hidden: int | None = None  # None = 8/3 * dim rounded up to `multiple_of`
    multiple_of: int = 32
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    dropout: float = 0.0  # residual and attention dropout (training only)
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        hidden = int(8 * self.dim / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


# --------------------------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys/values (layers, B, H_kv, S, Dh) of static shape with per-row `starts` (B,) and `lengths` (B,).

    Slot s of row b holds a real token iff starts[b] <= s < lengths[b]; its RoPE position is s - starts[b].
    `checked` caches validate every write and rollback on the host (a device sync each); unchecked ones (for
    decoding loops that size their cache up front) never wait on the device, and an out-of-range slot is an
    indexing error there instead of a ValueError.
    """

    def __init__(self, config: ARConfig, batch: int, max_len: int, starts: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, checked: bool = True):
        shape = (config.n_layers, batch, config.kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        if starts is None:
            starts = torch.zeros(batch, dtype=torch.long)
        self.starts = starts.to(device=device, dtype=torch.long).clone()  # (B,)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.max_len, self.checked = max_len, checked

    @property
    def batch(self) -> int:
        return self.starts.shape[0]

    def slots(self, T: int) -> torch.Tensor:
        """(B, T) the slots the next T tokens of each row go to."""
        return self.lengths[:, None] + torch.arange(T, device=self.lengths.device)

    def rollback(self, lengths: torch.Tensor) -> None:
        """Forget every slot at or after `lengths[b]` (never grows a row)."""
        lengths = lengths.to(self.lengths)
        if self.checked and (bool((lengths > self.lengths).any()) or bool((lengths < self.starts).any())):
            raise ValueError("rollback: new lengths must lie in [starts, lengths]")
        self.lengths.copy_(lengths)

    def mark_static(self) -> None:
        """Declare the buffers static for `torch.compile(mode="reduce-overhead")` (CUDA graphs read them in place)."""
        import torch._dynamo

        for t in (self.k, self.v, self.starts, self.lengths):
            torch._dynamo.mark_static_address(t)


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return norm.type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_len, Dh/2) for rotary positions."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)  # (T, Dh/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :Dh/2], x[..., Dh/2:]) of x (B, H, T, Dh) by angles cos/sin (B, T, Dh/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, Dh/2)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ARConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, self.n_kv * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                slots: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
            cache_k, cache_v = cache.k[self.layer], cache.v[self.layer]  # (B, Hkv, S, Dh)
            cache_k[rows, :, slots] = k.transpose(1, 2).to(cache_k.dtype)  # (B, T, Hkv, Dh)
            cache_v[rows, :, slots] = v.transpose(1, 2).to(cache_v.dtype)
            k, v = cache_k.type_as(q), cache_v.type_as(q)
        gqa = self.n_kv != self.n_heads  # SDPA shares each k/v head among n_heads // n_kv query heads
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*Dh)
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: ARConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config.dim, config.hidden_dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, cache=None, slots=None, mask=None):
        x = x + self.drop(self.attention(self.attention_norm(x), cos, sin, cache, slots, mask))
        return x + self.drop(self.feed_forward(self.ffn_norm(x)))


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """ids (B, T) -> logits (B, T, V); with a KVCache, the new tokens continue each row of the cache."""

    def __init__(self, config: ARConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("ARConfig.vocab_size must be set (use Vocab.size)")
        if config.dim % config.n_heads or config.n_heads % config.kv_heads or config.head_dim % 2:
            raise ValueError("dim must split into n_heads even-sized heads, and n_heads into n_kv_heads groups")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (T_max, Dh/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # residual projections scaled down with depth (GPT-2)
                scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def _apply(self, fn, recurse=True):
        """Move/cast as usual, then rebuild the RoPE tables in float32 on the new device: angles rounded to bf16
        would blur positions."""
        super()._apply(fn, recurse)
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        return self

    def new_cache(self, batch: int, max_len: int, starts: torch.Tensor | None = None,
                  checked: bool = True) -> KVCache:
        p = self.output.weight
        return KVCache(self.config, batch, max_len, starts, device=p.device, dtype=p.dtype, checked=checked)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """ids (B, T) -> float32 logits (B, T, V)."""
        B, T = ids.shape
        x = self.tok_embeddings(ids)  # (B, T, D)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
            positions = torch.arange(T, device=ids.device).expand(B, T)
            slots = mask = None
        else:
            slots, positions, mask = self._cache_layout(cache, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, Dh/2)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, slots, mask)
        if cache is not None:
            cache.lengths.add_(T)
        return F.linear(self.norm(x).float(), self.output.weight.float())  # (B, T, V) in float32

    def _cache_layout(self, cache: KVCache, T: int):
        """Slots (B, T) the new tokens go to, their RoPE positions (B, T), and the attention mask (B, 1, T, S)
        over all S cache slots. Positions past max_seq_len (drafts beyond the last token a decoder keeps) are
        clamped; a checked cache refuses them instead."""
        slots = cache.slots(T)  # (B, T)
        positions = slots - cache.starts[:, None]
        if cache.checked:
            if int(slots.max()) >= cache.max_len:
                raise ValueError(f"KV cache overflow: {int(slots.max()) + 1} slots needed, {cache.max_len} allocated")
            if int(positions.max()) >= self.config.max_seq_len:
                raise ValueError(f"sequence exceeds max_seq_len {self.config.max_seq_len}")
        positions = positions.clamp(0, self.config.max_seq_len - 1)  # left-padding slots get position 0
        keys = torch.arange(cache.max_len, device=slots.device)  # (S,)
        mask = (keys >= cache.starts[:, None, None]) & (keys <= slots[:, :, None])  # (B, T, S)
        mask = mask | (keys == slots[:, :, None])  # padding queries see themselves (no empty softmax rows)
        return slots, positions, mask[:, None]


# --------------------------------------------------------------------------------------------------------------------
# Size presets (vocab_size is filled in from the Vocab)
# --------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, ARConfig] = {
    "tiny": ARConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),  # unit tests
    "shapes": ARConfig(dim=192, n_layers=4, n_heads=6, max_seq_len=160),  # shapes data on 2 CPU cores
    "small": ARConfig(dim=512, n_layers=8, n_heads=8, max_seq_len=512),
    "base": ARConfig(dim=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "large": ARConfig(dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, max_seq_len=1024),
}


def config_from_preset(name: str, vocab_size: int, **overrides) -> ARConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown AR preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], vocab_size=vocab_size, **overrides)
