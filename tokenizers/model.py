"""The 1D image tokenizer: a ViT encoder reads L learned latent tokens out of an image, a quantizer makes them
discrete, and a ViT decoder paints the image back from any prefix of them (coarse to fine).

References:
- TiTok, "An Image is Worth 32 Tokens" (arXiv:2406.07550; bytedance/1d-tokenizer `modeling/modules/blocks.py`):
  latent tokens appended after the patch tokens, read out at the latent positions; the decoder reads a grid of
  mask tokens conditioned on the latents, with a pixel-shuffle head and a 3x3 conv.
- FlexTok (arXiv:2502.13967; apple/ml-flextok `token_dropout.py`) and One-D-Piece (arXiv:2501.10064): nested
  dropout — a per-sample keep length k, the tail k.. replaced by a learned mask token, so any prefix decodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from onetok.tokenizers.codec.postfilter import PostFilter
from onetok.tokenizers.quantize import QuantizerOutput, build_quantizer
from onetok.tokenizers.vit import Blocks, linear

CONFIG_FORMAT = "onetok-tokenizer"
CONFIG_VERSION = 1


@dataclass
class TokenizerConfig:
    image_size: int = 32
    patch_size: int = 8
    dec_patch_size: int = 0  # the decoder's grid of mask tokens; 0 = patch_size (a finer grid renders edges better)
    num_latent_tokens: int = 16  # L
    # encoder / decoder ViTs
    enc_width: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    dec_width: int = 128
    dec_depth: int = 4
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = False  # LayerNorm on queries and keys (steadier at high learning rates)
    # read-out blocks: the encoder's last n blocks update only the latent tokens (the patch tokens stop one block
    # earlier and serve as fixed keys/values), the decoder's last n only the grid tokens (the latents likewise);
    # 1 = the plain ViT stack. Fewer rows per block: a cheaper model of the same size (the TiTok presets)
    enc_readout_blocks: int = 1
    dec_readout_blocks: int = 1
    # a learned linear token-mixing path (MLP-Mixer, arXiv:2105.01601) beside attention: the encoder's latent tokens
    # start as L learned spatial poolings of the patch embeddings (distinct from step 0, no rank collapse), and the
    # decoder's grid tokens start as a LayerNorm'd linear map of all kept codes (dropped ones replaced by learned
    # codes) instead of one shared mask token; small models then leave the "background colour only" plateau in a
    # few hundred steps instead of thousands (measured: docs/benchmarks.md, "token mixing")
    token_mixing: bool = False
    # patch embedding: a linear patch projection (stem_channels=0) or a convolutional stem of stride-2 3x3 convs
    # ("Early convolutions help transformers see better", arXiv:2106.14881) starting at stem_channels wide
    stem_channels: int = 0
    # pixel head: linear -> (p, p, head_channels) -> pixel shuffle -> refine_layers 3x3 conv blocks -> RGB
    head_channels: int = 3
    refine_layers: int = 0
    # or, with upsample_channels > 0, a convolutional upsampler (the VQGAN-decoder idea TiTok's pixel decoder uses):
    # log2(p) stages of nearest x2 upsampling + two 3x3 convs, upsample_channels wide at full resolution, doubling
    # per coarser stage; weights shared across positions, so sharp edges are learnt far faster than per-patch pixels
    upsample_channels: int = 0
    # quantizer: "vq" (code_dim, codebook_size), "fsq" (fsq_levels), "lfq" (code_dim; codebook_size = 2**code_dim)
    quantizer: str = "fsq"
    code_dim: int = 12
    codebook_size: int = 4096
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    dead_code_threshold: float = 0.0  # vq: restart codes whose EMA use per step falls below this (0 = off)
    lfq_entropy_weight: float = 0.1
    # standardise each latent (token, dim) over the batch before quantizing (BatchNorm, running stats at inference):
    # keeps the codes image-dependent and spread over the codebook from the first step (no early code collapse)
    latent_batchnorm: bool = False
    # nested dropout: per-sample keep length k ~ "uniform" over 1..L, "pow2" over 1,2,4..,L, or "none";
    # with probability full_length_prob a sample keeps all L tokens
    token_drop: str = "uniform"
    full_length_prob: float = 0.0

    def __post_init__(self):
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        for name in ("patch_size", "dec_patch_size"):
            if getattr(self, name) and self.image_size % getattr(self, name):
                raise ValueError(f"image_size {self.image_size} is not a multiple of {name} {getattr(self, name)}")
        if self.token_drop not in ("uniform", "pow2", "none"):
            raise ValueError(f"token_drop must be uniform, pow2 or none, not {self.token_drop!r}")
        for part in ("enc", "dec"):
            depth, readout = getattr(self, f"{part}_depth"), getattr(self, f"{part}_readout_blocks")
            if not 1 <= readout <= depth:
                raise ValueError(f"{part}_readout_blocks must be in 1..{part}_depth = {depth}, got {readout}")
        if self.quantizer not in ("vq", "fsq", "lfq"):
            raise ValueError(f"quantizer must be vq, fsq or lfq, not {self.quantizer!r}")
        if self.quantizer == "fsq":  # derived sizes, kept consistent so config.json tells the truth
            self.code_dim, self.codebook_size = len(self.fsq_levels), math.prod(self.fsq_levels)
        elif self.quantizer == "lfq":
            self.codebook_size = 2**self.code_dim

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def dec_patch(self) -> int:
        """The decoder's patch size: dec_patch_size, or patch_size when that is 0."""
        return self.dec_patch_size or self.patch_size

    @property
    def dec_grid_size(self) -> int:
        return self.image_size // self.dec_patch

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TokenizerConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        return d

    # fields added after the first format, with the value that builds the models made before them: left out of the
    # fingerprint at that value (codec.fingerprint), so those tokenizers and their .otok files keep their fingerprints
    LATER_FIELDS: ClassVar[dict] = {"enc_readout_blocks": 1, "dec_readout_blocks": 1}


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, 3, H, W), images scale [0, 1], not clamped
    quantizer: QuantizerOutput
    keep: torch.Tensor  # (B,) number of tokens the decoder saw per sample


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(1, grid*grid, width) 2D sine-cosine position table (MAE); the learned position embeddings start here."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    out = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None].double() * omega[None]  # (N, D/4)
        out += [angles.sin(), angles.cos()]
    table = torch.cat(out, dim=1)  # (N, 4 * (D/4))
    table = torch.nn.functional.pad(table, (0, width - table.shape[1]))  # (N, D)
    return table.float()[None]


def conv_norm_act(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """3x3 conv + GroupNorm (up to 8 groups) + GELU, the unit of the conv stem and the conv upsampler."""
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out), nn.GELU()]


def halvings(patch_size: int, what: str) -> int:
    """log2(patch_size): the number of stride-2 (or x2) conv stages a conv stem or upsampler needs."""
    if patch_size & (patch_size - 1):
        raise ValueError(f"a conv {what} needs a power-of-two patch size, not {patch_size}")
    return patch_size.bit_length() - 1


def patch_embedding(patch_size: int, width: int, stem_channels: int) -> nn.Module:
    """(B, 3, H, W) -> (B, width, H/p, W/p): one strided linear projection, or a conv stem (p a power of two)."""
    if stem_channels <= 0:
        return nn.Conv2d(3, width, patch_size, stride=patch_size)
    layers, channels = [], 3
    for i in range(halvings(patch_size, "stem")):
        out = stem_channels * 2**i
        layers += conv_norm_act(channels, out, stride=2)
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> latents (B, L, code_dim)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.patch_embed = patch_embedding(cfg.patch_size, cfg.enc_width, cfg.stem_channels)
        self.pos_embed = nn.Parameter(sincos_2d(cfg.grid_size, cfg.enc_width))  # (1, N, D)
        self.latent_tokens = nn.Parameter(0.02 * torch.randn(1, cfg.num_latent_tokens, cfg.enc_width))
        n, L = cfg.grid_size**2, cfg.num_latent_tokens
        self.pool = nn.Parameter(torch.randn(L, n) / n**0.5) if cfg.token_mixing else None  # (L, N)
        self.blocks = Blocks(cfg.enc_width, cfg.enc_depth, cfg.enc_heads, cfg.mlp_ratio, cfg.qk_norm,
                             cfg.enc_readout_blocks)
        self.norm = nn.LayerNorm(cfg.enc_width)
        self.to_code = nn.Linear(cfg.enc_width, cfg.code_dim)
        n_latent_features = cfg.num_latent_tokens * cfg.code_dim
        self.latent_norm = nn.BatchNorm1d(n_latent_features, affine=False) if cfg.latent_batchnorm else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.patch_embed(images * 2 - 1), "b d h w -> b (h w) d")  # (B, N, D)
        latents = self.latent_tokens.expand(x.shape[0], -1, -1)  # (B, L, D)
        if self.pool is not None:
            latents = latents + torch.einsum("ln,bnd->bld", self.pool.to(x.dtype), x)  # (B, L, D)
        x = x + self.pos_embed  # (B, N, D)
        n = x.shape[1]
        x = self.blocks(torch.cat([x, latents], dim=1), rows=slice(n, None))  # (B, N + L, D) in, (B, L, D) out
        x = self.norm(x)  # (B, L, D) read out at the latent positions
        z = self.to_code(x)  # (B, L, code_dim)
        if self.latent_norm is not None:
            z = self.latent_norm(z.flatten(1).float()).view_as(z)  # per (token, dim) over the batch
        return z


class PixelHead(nn.Module):
    """Grid features (B, N, D) -> image (B, 3, H, W): linear to p*p*C, pixel shuffle, optional residual convs."""

    def __init__(self, width: int, patch_size: int, channels: int, refine_layers: int):
        super().__init__()
        self.patch_size = patch_size
        self.linear = nn.Linear(width, patch_size * patch_size * channels)
        self.refine = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(refine_layers)
        )
        self.to_rgb = nn.Conv2d(channels, 3, 3, padding=1) if (refine_layers or channels != 3) else nn.Identity()

    def last_layer_weight(self) -> torch.Tensor:
        """The weight nearest the pixels (the GAN's adaptive weight balances gradients there)."""
        return self.to_rgb.weight if isinstance(self.to_rgb, nn.Conv2d) else self.linear.weight

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        x = linear(x, self.linear.weight, self.linear.bias)  # (B, N, p*p*C)
        x = rearrange(x, "b (h w) (p q c) -> b (h p) (w q) c", h=grid, p=self.patch_size, q=self.patch_size)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) in channels-last memory: the full-resolution convs run NHWC
        for block in self.refine:
            update = block(x)  # (B, C, H, W)
            x = update.add_(x) if not torch.is_grad_enabled() else x + update
        return self.to_rgb(x)  # (B, 3, H, W)


class ConvUpsampler(nn.Module):
    """Grid features (B, N, D) -> image (B, 3, H, W) by log2(p) stages of nearest x2 + two 3x3 convs (p a power of 2)."""

    def __init__(self, width: int, patch_size: int, channels: int):
        super().__init__()
        stages = halvings(patch_size, "upsampler")
        widths = [channels * 2 ** (stages - i) for i in range(stages + 1)]  # coarse to fine, ends at `channels`
        self.proj = nn.Conv2d(width, widths[0], 1)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *conv_norm_act(c_in, c_out),
                          *conv_norm_act(c_out, c_out))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def last_layer_weight(self) -> torch.Tensor:
        return self.to_rgb.weight

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        x = self.proj(rearrange(x, "b (h w) d -> b h w d", h=grid).permute(0, 3, 1, 2))  # (B, C0, g, g) NHWC
        for stage in self.stages:
            x = stage(x)  # (B, C, 2h, 2w)
        return self.to_rgb(x)  # (B, 3, H, W)


class Decoder(nn.Module):
    """Quantized latents (B, L, code_dim) + keep lengths (B,) -> image (B, 3, H, W) on the [0, 1] scale."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.grid = cfg.dec_grid_size
        self.from_code = nn.Linear(cfg.code_dim, cfg.dec_width)
        self.drop_token = nn.Parameter(0.02 * torch.randn(1, 1, cfg.dec_width))  # replaces dropped tail latents
        self.latent_pos = nn.Parameter(0.02 * torch.randn(1, cfg.num_latent_tokens, cfg.dec_width))
        self.grid_pos = nn.Parameter(sincos_2d(self.grid, cfg.dec_width))  # (1, N, D)
        n, L = self.grid**2, cfg.num_latent_tokens
        self.grid_token, self.mix = None, None  # one shared mask token for the grid, or (token mixing) a map of codes
        if not cfg.token_mixing:
            self.grid_token = nn.Parameter(0.02 * torch.randn(1, 1, cfg.dec_width))
        else:
            self.drop_code = nn.Parameter(torch.zeros(1, L, cfg.code_dim))  # stands in for dropped codes
            self.mix = nn.Sequential(nn.Linear(L * cfg.code_dim, n * cfg.dec_width),
                                     nn.Unflatten(1, (n, cfg.dec_width)), nn.LayerNorm(cfg.dec_width))
            self.grid_pos.data.mul_(cfg.dec_width**-0.5)  # the unit-scale content must dominate the position code
        self.blocks = Blocks(cfg.dec_width, cfg.dec_depth, cfg.dec_heads, cfg.mlp_ratio, cfg.qk_norm,
                             cfg.dec_readout_blocks)
        self.norm = nn.LayerNorm(cfg.dec_width)
        if cfg.upsample_channels > 0:
            self.head = ConvUpsampler(cfg.dec_width, cfg.dec_patch, cfg.upsample_channels)
        else:
            self.head = PixelHead(cfg.dec_width, cfg.dec_patch, cfg.head_channels, cfg.refine_layers)

    def forward(self, codes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, L, _ = codes.shape
        codes = codes.to(self.from_code.weight.dtype)
        x = self.from_code(codes)  # (B, L, D)
        kept = torch.arange(L, device=codes.device)[None, :, None] < keep[:, None, None]  # (B, L, 1)
        x = torch.where(kept, x, self.drop_token)  # (B, L, D)
        if self.mix is not None:
            mixed = torch.where(kept, codes, self.drop_code.to(codes.dtype))  # (B, L, code_dim)
            grid = self.mix(mixed.flatten(1)) + self.grid_pos  # (B, N, D)
        else:
            grid = (self.grid_token + self.grid_pos).expand(B, -1, -1)  # (B, N, D)
        x = x + self.latent_pos[:, :L]  # (B, L, D)
        x = self.blocks(torch.cat([grid, x], dim=1), rows=slice(0, self.grid**2))  # (B, N + L, D) in, (B, N, D) out
        x = self.norm(x)  # (B, N, D) read out at the grid positions
        image = self.head(x, self.grid).contiguous()  # (B, 3, H, W) back from channels-last memory
        return (image + 1) / 2


# --------------------------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@contextlib.contextmanager
def _inference(module: nn.Module, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """eval mode + no grad for the block (and autocast to `dtype` on `device` if given), then restore the training
    flag."""
    was_training = module.training
    module.eval()
    cast = torch.autocast(device.type, dtype=dtype) if dtype not in (None, torch.float32) else contextlib.nullcontext()
    try:
        with torch.no_grad(), cast:
            yield
    finally:
        module.train(was_training)


class Tokenizer(nn.Module):
    """images (B, 3, S, S) in [0, 1] <-> token ids (B, k), 1 <= k <= L, ordered coarse to fine."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(
            config.quantizer, config.code_dim, config.codebook_size, config.fsq_levels, config.commitment_weight,
            config.codebook_weight, config.dead_code_threshold, config.lfq_entropy_weight,
        )
        self.decoder = Decoder(config)
        for part in (self.encoder, self.decoder):
            part.apply(_init_weights)
        self.postfilter: PostFilter | None = None  # see add_postfilter
        self.inference_dtype: torch.dtype | None = None  # encode/decode compute dtype; None: bf16 on CUDA, else fp32

    def add_postfilter(self, channels: int = 16, layers: int = 3) -> PostFilter:
        """Attach a (new, identity) `PostFilter` for tiled decoding. It is saved with the weights and, being part
        of the state dict, of the fingerprint; its size is stored in config.json beside (not in) the config, so
        tokenizers without one keep their fingerprints."""
        self.postfilter = PostFilter(self.image_size, channels, layers)
        return self.postfilter

    def refine(self, images: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The post-filter on decoded tiles put together, (B, 3, H, W) in [0, 1] (identity without one)."""
        if self.postfilter is None:
            return images
        with _inference(self):
            return self.postfilter(images.float(), origin).clamp(0, 1)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def num_latent_tokens(self) -> int:
        return self.config.num_latent_tokens

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # ---- training forward -------------------------------------------------------------------------------------------

    def sample_keep(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Per-sample keep lengths (B,) from the configured nested-dropout distribution."""
        L, cfg = self.num_latent_tokens, self.config
        if cfg.token_drop == "none":
            return torch.full((batch,), L, device=device, dtype=torch.long)
        if cfg.token_drop == "uniform":
            keep = torch.randint(1, L + 1, (batch,), device=device)
        else:  # pow2: 1, 2, 4, ..., L (and L itself when it is not a power of two)
            choices = sorted({min(2**i, L) for i in range(L.bit_length() + 1)})
            keep = torch.tensor(choices, device=device)[torch.randint(0, len(choices), (batch,), device=device)]
        full = torch.rand(batch, device=device) < cfg.full_length_prob
        return torch.where(full, torch.full_like(keep, L), keep)

    def forward(self, images: torch.Tensor, keep: torch.Tensor | int | None = None) -> TokenizerOutput:
        """Encode, quantize, decode. `keep`: (B,) or int tokens per sample; None = nested dropout in training,
        all L in eval."""
        B = images.shape[0]
        if keep is None:
            keep = self.sample_keep(B, images.device) if self.training else self.num_latent_tokens
        if isinstance(keep, int):
            keep = torch.full((B,), keep, device=images.device, dtype=torch.long)
        quant = self.quantizer(self.encoder(images))
        reconstruction = self.decoder(quant.quantized, keep)
        return TokenizerOutput(reconstruction, quant, keep)

    # ---- inference API ----------------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        S = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images (B, 3, {S}, {S}), got {tuple(images.shape)}")

    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] -> (B, k) int64 ids, k = num_tokens or L (eval mode, no grad)."""
        self._check_images(images)
        k = self.num_latent_tokens if num_tokens is None else int(num_tokens)
        if not 1 <= k <= self.num_latent_tokens:
            raise ValueError(f"num_tokens must be in 1..{self.num_latent_tokens}, got {k}")
        with _inference(self, images.device, self.compute_dtype(images.device)):
            latents = self.encoder(images.to(self.encoder.pos_embed.dtype))  # (B, L, code_dim)
        with _inference(self):
            indices = self.quantizer(latents.float()).indices  # (B, L), always in fp32
        return indices[:, :k].contiguous()

    def decode(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k) ids, 1 <= k <= L -> (B, 3, S, S) float images in [0, 1] (eval mode, no grad). With `keep` (B,),
        image b is decoded from its first keep[b] ids only (1 <= keep[b] <= k), so one batch mixes token counts."""
        B, k = ids.shape
        L = self.num_latent_tokens
        if not 1 <= k <= L:
            raise ValueError(f"expected 1..{L} tokens per image, got {k}")
        if ids.min() < 0 or ids.max() >= self.codebook_size:
            raise ValueError(f"token ids must lie in [0, {self.codebook_size})")
        if keep is None:
            keep = torch.full((B,), k, device=ids.device, dtype=torch.long)
        elif keep.shape != (B,) or keep.min() < 1 or keep.max() > k:
            raise ValueError(f"keep must be (B,) = ({B},) counts in 1..{k}")
        with _inference(self):
            codes = self.quantizer.codes_from_indices(ids.long())  # (B, k, code_dim)
            codes = F.pad(codes, (0, 0, 0, L - k))  # (B, L, code_dim); the tail becomes the drop token
        with _inference(self, ids.device, self.compute_dtype(ids.device)):
            images = self.decoder(codes, keep.to(ids.device).long())
        return images.float().clamp(0, 1)

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype encode/decode compute in (autocast; the quantizer stays fp32): `inference_dtype` if set, else
        bf16 on CUDA and fp32 elsewhere."""
        if self.inference_dtype is not None:
            return self.inference_dtype
        return torch.bfloat16 if device.type == "cuda" else torch.float32

    # ---- persistence ------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` + `model.safetensors` into `directory` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "config": self.config.to_dict()}
        if self.postfilter is not None:
            meta["postfilter"] = {"channels": self.postfilter.body[0].out_channels, "layers": self.postfilter.layers}
        (directory / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": CONFIG_FORMAT})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Tokenizer:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{directory / 'config.json'}: not a onetok tokenizer config")
        model = cls(TokenizerConfig.from_dict(meta["config"]))
        if meta.get("postfilter"):
            model.add_postfilter(**meta["postfilter"])
        model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(map_location)))
        return model.to(map_location).eval()


# --------------------------------------------------------------------------------------------------------------------
# Size presets
# --------------------------------------------------------------------------------------------------------------------

# The TiTok sizes (ViT-S/B/L, 128/64/32 tokens at 256 px) with VQ as in TiTok, a linear pixel head as its non-legacy
# decoder (no full-resolution convs), and read-out blocks: the encoder's second half updates only the latents (the
# patch tokens stop there and serve as keys/values), and the decoder's latents are keys/values only (never updated).
# Same parameters and fewer multiply-adds than plain stacks; what it costs in PSNR and gains in speed is measured in
# docs/benchmarks.md ("Tokenizer speed against the reference, part 2").
_TITOK_VQ = dict(image_size=256, patch_size=16, quantizer="vq", code_dim=12, codebook_size=4096,
                 head_channels=3, refine_layers=0, dead_code_threshold=0.01)


def _titok(tokens: int, width: int, depth: int, heads: int) -> TokenizerConfig:
    return TokenizerConfig(num_latent_tokens=tokens, enc_width=width, enc_depth=depth, enc_heads=heads,
                           dec_width=width, dec_depth=depth, dec_heads=heads, enc_readout_blocks=depth // 2,
                           dec_readout_blocks=depth, **_TITOK_VQ)


PRESETS: dict[str, TokenizerConfig] = {
    "tiny": TokenizerConfig(image_size=16, patch_size=4, num_latent_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                            dec_width=32, dec_depth=1, dec_heads=2, quantizer="vq", code_dim=8, codebook_size=64),
    "shapes": TokenizerConfig(image_size=32, patch_size=8, num_latent_tokens=16, enc_width=64, enc_depth=2,
                              enc_heads=2, dec_width=64, dec_depth=2, dec_heads=2, upsample_channels=16,
                              quantizer="fsq", fsq_levels=(8, 8, 8), token_mixing=True, latent_batchnorm=True,
                              full_length_prob=0.5),
    # the built-in photo codec: 32 px tiles of real photographs, up to 32 tokens of 9 bits each (0.28 bpp); a linear
    # pixel head (no conv upsampler), chosen by the sweep in docs/benchmarks.md ("The photo codec")
    "photo": TokenizerConfig(image_size=32, patch_size=8, num_latent_tokens=32, enc_width=128, enc_depth=2,
                             enc_heads=4, dec_width=128, dec_depth=2, dec_heads=4, upsample_channels=0,
                             head_channels=3, refine_layers=0, quantizer="fsq", fsq_levels=(8, 8, 8),
                             token_mixing=True, latent_batchnorm=True, full_length_prob=0.25),
    "titok-s-128": _titok(128, 512, 8, 8),
    "titok-b-64": _titok(64, 768, 12, 12),
    "titok-l-32": _titok(32, 1024, 24, 16),
    "flextok-256": TokenizerConfig(image_size=256, patch_size=16, num_latent_tokens=256, enc_width=768, enc_depth=12,
                                   enc_heads=12, dec_width=768, dec_depth=12, dec_heads=12, head_channels=32,
                                   refine_layers=1, quantizer="fsq", fsq_levels=(8, 8, 8, 5, 5, 5), token_drop="pow2"),
}


def preset(name: str, **overrides) -> TokenizerConfig:
    """A copy of a named preset with some fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown tokenizer preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
