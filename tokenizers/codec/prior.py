"""The learned prior over a tile's token ids: a small causal transformer that gives the probability of each id of a
tile given its earlier ids (coarse to fine) and the first id of each of its 8 neighbouring tiles. The entropy coder
(`onetok.tokenizers.codec.entropy`) turns those probabilities into bits.

One sequence per tile (length P + L, P = 9):

    [n_0 .. n_7]  [<bos>]  [id_0 .. id_{L-2}]      inputs
                  id_0     id_1 .. id_{L-1}          targets (read at <bos> and after it)

n_j is the first id of the j-th neighbour (up-left, up, up-right, left, right, down-left, down, down-right), or
<missing> when it lies outside the image or is not decoded yet: the first ids of all tiles are coded in a wavefront
pass that only knows the up-left, up and left neighbours (`WAVEFRONT_MASK`), the rest of each tile's ids afterwards
with all 8. Training masks neighbours the same way at random, so one model serves both passes and edge tiles.

Inference runs through `prefill` + `step` with a key/value cache: the coder needs the exact same arithmetic in the
encoder and the decoder, and the decoder can only go one position at a time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_FORMAT = "onetok-prior"
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # (dy, dx), raster order
WAVEFRONT_MASK = (False, False, True, False, True, True, True, True)  # True: not known when the first ids are coded


@dataclass
class PriorConfig:
    codebook_size: int = 512  # K
    num_tokens: int = 32  # L, ids per tile
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def missing(self) -> int:  # id of an unknown neighbour
        return self.codebook_size

    @property
    def bos(self) -> int:
        return self.codebook_size + 1

    @property
    def prefix(self) -> int:  # P: neighbour slots + <bos>
        return len(NEIGHBOURS) + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PriorCache(NamedTuple):
    """Static-shape keys and values of the positions seen so far: per layer (B, H, P + L, D/H), filled up to
    `length[0]` (a one-element list, so steps can advance it)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: list[int]


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP; `cache` (keys, values) of earlier positions, extended in place."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0) -> torch.Tensor:
        """x (B, T, D) at positions start .. start + T - 1; with `cache` (keys, values (B, H, T_max, d)) the new
        keys/values are written at those positions and attention reads positions 0 .. start + T - 1."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, T, d)
        if cache is not None:
            cache[0][:, :, start:start + T], cache[1][:, :, start:start + T] = k, v
            k, v = cache[0][:, :, :start + T], cache[1][:, :, :start + T]  # (B, H, start + T, d)
        # causal within the new positions (prefill from 0); one new position attends to everything before it
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------------------------


class TilePrior(nn.Module):
    """Next-id logits for tile id sequences: (B, P + L - 1) input ids -> (B, L, K) logits for id_0 .. id_{L-1}."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.tokenizer_fingerprint: str | None = None  # hex, of the tokenizer whose ids this prior models
        c = config
        self.embed = nn.Embedding(c.codebook_size + 2, c.width)  # codes, <missing>, <bos>
        self.pos = nn.Parameter(0.02 * torch.randn(1, c.prefix + c.num_tokens - 1, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.codebook_size)

    def sequence(self, context: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """context (B, 8) neighbour ids (or <missing>), ids (B, L) -> inputs (B, P + L - 1)."""
        bos = torch.full_like(context[:, :1], self.config.bos)
        return torch.cat([context, bos, ids[:, :-1]], dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embed(inputs) + self.pos[:, : inputs.shape[1]]  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, self.config.prefix - 1:]))  # (B, L, K): read at <bos> and after

    # ---- incremental inference (what the entropy coder runs) ----------------------------------------------------

    def prefill(self, context: torch.Tensor) -> tuple[torch.Tensor, PriorCache]:
        """context (B, 8) -> logits for id_0 (B, K) and the cache after <bos>."""
        c = self.config
        bos = torch.full_like(context[:, :1], c.bos)
        x = self.embed(torch.cat([context, bos], dim=1)) + self.pos[:, : c.prefix]  # (B, P, D)
        shape = (len(context), c.heads, c.prefix + c.num_tokens - 1, c.width // c.heads)
        cache = PriorCache([x.new_zeros(shape) for _ in self.blocks], [x.new_zeros(shape) for _ in self.blocks], [0])
        for i, block in enumerate(self.blocks):
            x = block(x, (cache.keys[i], cache.values[i]), 0)
        cache.length[0] = c.prefix
        return self.head(self.norm(x[:, -1])), cache

    def step(self, ids: torch.Tensor, cache: PriorCache) -> tuple[torch.Tensor, PriorCache]:
        """The previous id of each tile (B,) -> logits for the next one (B, K); the cache advances one position."""
        t = cache.length[0]
        x = self.embed(ids[:, None]) + self.pos[:, t:t + 1]  # (B, 1, D)
        for i, block in enumerate(self.blocks):
            x = block(x, (cache.keys[i], cache.values[i]), t)
        cache.length[0] = t + 1
        return self.head(self.norm(x[:, -1])), cache

    # ---- persistence ------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, tokenizer_fingerprint: str | None = None) -> None:
        """config.json (with the fingerprint of the tokenizer whose ids it models) + model.safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": CONFIG_FORMAT, "version": 1, "config": self.config.to_dict(),
                "tokenizer_fingerprint": tokenizer_fingerprint}
        (directory / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": CONFIG_FORMAT})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TilePrior:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{directory / 'config.json'}: not a onetok prior config")
        model = cls(PriorConfig(**meta["config"]))
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        model.tokenizer_fingerprint = meta.get("tokenizer_fingerprint")
        return model.eval()


PRESETS: dict[str, PriorConfig] = {
    "tiny": PriorConfig(codebook_size=64, num_tokens=8, width=32, depth=1, heads=2),
    "photo": PriorConfig(codebook_size=512, num_tokens=32, width=128, depth=2, heads=4),
    "photo-fast": PriorConfig(codebook_size=512, num_tokens=32, width=64, depth=2, heads=2),
}


def neighbour_ids(first: torch.Tensor, missing: int, mask: tuple[bool, ...] | None = None) -> torch.Tensor:
    """first ids on the tile grid (..., R, C) -> each tile's 8 neighbour ids (..., R * C, 8) in `NEIGHBOURS` order,
    `missing` outside the grid and where `mask` is True (e.g. `WAVEFRONT_MASK`)."""
    *lead, R, C = first.shape
    padded = F.pad(first, (1, 1, 1, 1), value=missing)  # (..., R + 2, C + 2)
    slots = [padded[..., 1 + dy:1 + dy + R, 1 + dx:1 + dx + C] for dy, dx in NEIGHBOURS]  # 8 x (..., R, C)
    out = torch.stack(slots, dim=-1).reshape(*lead, R * C, len(NEIGHBOURS))  # (..., R * C, 8)
    if mask is not None:
        out[..., torch.tensor(mask)] = missing
    return out
