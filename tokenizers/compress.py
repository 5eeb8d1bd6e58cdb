"""Images <-> `.otok` files: the tiled codec (version 2), and decoding of legacy square files (version 1).

`encode_image` codes one RGB image at its own resolution: an optional downscale (`scale`), the tile grid
(`onetok.tokenizers.tiling`), one encoder pass for all L ids of every tile, then the rate control picks each tile's
token count -- the same k everywhere (`tokens`), the smallest k reaching a PSNR per tile (`psnr`), or a target
size for the whole file in bits per pixel with every byte counted (`bpp`). `decode_image` inverts it: tiles decoded
from their prefixes, the grid cropped to the coded size, and the image resized back to its original size when it
was downscaled. The byte format itself belongs to `onetok.tokenizers.codec`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from onetok.tokenizers import codec, tiling

DOWNSCALE = Image.Resampling.LANCZOS
UPSCALE = Image.Resampling.BICUBIC


class RateControl(NamedTuple):
    """How many tokens each tile gets; exactly one of tokens / bpp / psnr is set (all None = L tokens)."""

    tokens: int | None = None  # the same k for every tile
    bpp: float | None = None  # target bits per pixel of the original image, the whole file counted
    psnr: float | None = None  # per tile, the smallest k whose reconstruction reaches this many dB
    scale: float = 1.0  # downscale before tiling (0 < scale <= 1); decoding resizes back to the original size


class Encoded(NamedTuple):
    image: codec.TiledImage
    reached: bool  # False when a --bpp target is below the smallest possible file (every tile at 1 token)


def coded_size(width: int, height: int, scale: float) -> tuple[int, int]:
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    return max(1, round(width * scale)), max(1, round(height * scale))


def overhead_bits(num_tiles: int, max_tokens: int, per_tile_counts: bool) -> int:
    """Bits of a one-image version-2 file that are not ids: header, image record, token counts, CRC."""
    counts = codec.record_bytes(num_tiles, codec.count_bits(max_tokens)) if per_tile_counts else codec.UNIFORM_COUNT_BYTES
    return 8 * (codec.HEADER_V2_BYTES + codec.IMAGE_V2_BYTES + counts + codec.CRC_BYTES)


class Analysis:
    """One image cut into tiles and encoded once (all L ids per tile); the squared error of every tile at every
    token count is computed on first use and shared by every rate-control setting asked of it."""

    def __init__(self, tokenizer, image: Image.Image, scale: float = 1.0):
        self.tokenizer, (self.width, self.height) = tokenizer, image.size
        if max(self.width, self.height) > codec.MAX_SIDE:
            raise ValueError(f"image size {self.width}x{self.height} exceeds {codec.MAX_SIDE} px a side")
        self.coded = coded_size(self.width, self.height, scale)
        small = image if self.coded == image.size else image.resize(self.coded, DOWNSCALE)
        self.tiles, self.grid = tiling.tile_image(np.asarray(small.convert("RGB"), dtype=np.uint8),
                                                  tokenizer.image_size)
        self.ids = tiling.encode_tiles(tokenizer, self.tiles)  # (N, L)
        self.ladder = list(range(1, tokenizer.num_latent_tokens + 1))
        self._sse: np.ndarray | None = None

    @property
    def sse(self) -> np.ndarray:
        """(N, L) squared 8-bit error of each tile decoded from its first k ids, k = 1..L."""
        if self._sse is None:
            self._sse = tiling.sse_ladder(self.tokenizer, self.tiles, self.ids, self.ladder, self.grid)
        return self._sse

    def counts(self, rate: RateControl) -> tuple[np.ndarray, bool]:
        """Per-tile token counts (N,) for the rate control, and whether a bpp target was reachable."""
        L = len(self.ladder)
        if rate.bpp is None and rate.psnr is None:
            k = L if rate.tokens is None else rate.tokens
            if not 1 <= k <= L:
                raise ValueError(f"tokens must be in 1..{L} for this tokenizer, got {k}")
            return tiling.fixed_counts(self.grid, k), True
        if rate.psnr is not None:
            return tiling.counts_for_psnr(self.sse, self.ladder, self.grid.valid_pixels(), rate.psnr), True
        bits = codec.bits_per_id(self.tokenizer.codebook_size)
        budget = rate.bpp * self.width * self.height - overhead_bits(self.grid.count, L, per_tile_counts=True)
        cost = np.broadcast_to(np.asarray(self.ladder, dtype=np.float64) * bits, self.sse.shape)
        choice = tiling.allocate_bits(self.sse, cost, budget)
        return np.asarray(self.ladder, dtype=np.int64)[choice], bool(cost[:, 0].sum() <= budget)

    def encode(self, rate: RateControl) -> Encoded:
        counts, reached = self.counts(rate)
        flat = self.ids[np.arange(self.ids.shape[1])[None, :] < counts[:, None]]  # (sum(counts),) tile by tile
        return Encoded(codec.TiledImage(self.width, self.height, *self.coded, counts, flat), reached)


def encode_image(tokenizer, image: Image.Image, rate: RateControl | None = None) -> Encoded:
    """One RGB image -> its tiled ids and per-tile token counts (see the module docstring)."""
    rate = rate or RateControl()
    return Analysis(tokenizer, image, rate.scale).encode(rate)


def new_file(tokenizer, images: list[codec.TiledImage], fp: bytes | None = None) -> codec.TiledFile:
    fp = codec.fingerprint(tokenizer) if fp is None else fp
    return codec.TiledFile(fp, tokenizer.codebook_size, tokenizer.image_size, tokenizer.num_latent_tokens,
                           tuple(images))


def check_tokenizer(tokenizer, f: codec.TiledFile) -> None:
    if (f.codebook_size, f.tile_size) != (tokenizer.codebook_size, tokenizer.image_size) \
            or f.max_tokens > tokenizer.num_latent_tokens:
        raise codec.OtokError(f"file is for codebook {f.codebook_size}, {f.tile_size}px tiles and up to "
                              f"{f.max_tokens} tokens; the tokenizer has {tokenizer.codebook_size}, "
                              f"{tokenizer.image_size}px and {tokenizer.num_latent_tokens}")


def decode_image(tokenizer, f: codec.TiledFile, im: codec.TiledImage) -> Image.Image:
    """One image of a version-2 file at its original size."""
    check_tokenizer(tokenizer, f)
    grid = tiling.TileGrid(im.coded_width, im.coded_height, f.tile_size)
    padded = np.zeros((grid.count, int(im.counts.max())), dtype=np.int64)  # (N, max k), ids left-aligned
    padded[np.arange(padded.shape[1])[None, :] < im.counts[:, None]] = im.ids
    array = tiling.untile(tiling.decode_tiles(tokenizer, padded, im.counts), grid)
    decoded = Image.fromarray(array)
    return decoded if decoded.size == (im.width, im.height) else decoded.resize((im.width, im.height), UPSCALE)


def compress(tokenizer, images: list[Image.Image], rate: RateControl | None = None) -> bytes:
    return codec.dumps(new_file(tokenizer, [encode_image(tokenizer, im, rate).image for im in images]))


def decompress(tokenizer, data: bytes) -> list[Image.Image]:
    """Both versions; the file must carry this tokenizer's fingerprint."""
    f = codec.loads(data, codec.fingerprint(tokenizer))
    return decode_file(tokenizer, f)


def decode_file(tokenizer, f: codec.OtokFile | codec.TiledFile) -> list[Image.Image]:
    if isinstance(f, codec.TiledFile):
        return [decode_image(tokenizer, f, im) for im in f.images]
    return decode_squares(tokenizer, f)


# --------------------------------------------------------------------------------------------------------------------
# Version 1: every image fitted to one square (read for compatibility; `encode_squares` makes such files for tests)
# --------------------------------------------------------------------------------------------------------------------


def _letterbox(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, w, h): where a width x height image sits inside the size x size square in "pad" mode."""
    scale = size / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - w) // 2, (size - h) // 2, w, h


def fit_square(image: Image.Image, size: int, fit: str) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: centre crop ("crop") or letterbox with edge padding ("pad")."""
    image = image.convert("RGB")
    W, H = image.size
    if fit == "crop":
        m = min(W, H)
        image = image.crop(((W - m) // 2, (H - m) // 2, (W - m) // 2 + m, (H - m) // 2 + m))
        if m != size:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)
    left, top, w, h = _letterbox(W, H, size)
    if (w, h) != (W, H):
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    pads = ((top, size - h - top), (left, size - w - left), (0, 0))
    return np.pad(np.asarray(image, dtype=np.uint8), pads, mode="edge")


def restore_size(square: np.ndarray, width: int, height: int, fit: str) -> Image.Image:
    """Inverse of `fit_square` on a decoded (S, S, 3) uint8 square. "pad": the letterboxed region resized back to
    width x height. "crop": the square resized to the centre crop and placed at the centre; the bands that were
    cropped away were never coded and are filled by repeating the edge pixels."""
    S = square.shape[0]
    if fit == "pad":
        left, top, w, h = _letterbox(width, height, S)
        image = Image.fromarray(square[top:top + h, left:left + w])
        return image if (w, h) == (width, height) else image.resize((width, height), Image.Resampling.BICUBIC)
    m = min(width, height)
    image = Image.fromarray(square)
    if m != S:
        image = image.resize((m, m), Image.Resampling.BICUBIC)
    left, top = (width - m) // 2, (height - m) // 2
    pads = ((top, height - m - top), (left, width - m - left), (0, 0))
    return Image.fromarray(np.pad(np.asarray(image), pads, mode="edge"))


def to_tensor(squares: list[np.ndarray]) -> torch.Tensor:
    """[(S, S, 3) uint8] -> (B, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [0, 1] -> (B, S, S, 3) uint8, rounded."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def encode_squares(tokenizer, images: list[Image.Image], num_tokens: int | None = None, fit: str = "pad",
                   fp: bytes | None = None) -> codec.OtokFile:
    """A version-1 file: each image fitted to the tokenizer's square and encoded with k = num_tokens (default L)."""
    if fit not in codec.FITS:
        raise ValueError(f"fit must be one of {codec.FITS}, not {fit!r}")
    x = to_tensor([fit_square(image, tokenizer.image_size, fit) for image in images])  # (B, 3, S, S)
    ids = tokenizer.encode(x, num_tokens).cpu().numpy().astype(np.int64)  # (B, k)
    fp = codec.fingerprint(tokenizer) if fp is None else fp
    return codec.OtokFile(fp, tokenizer.codebook_size, tokenizer.image_size, fit, tuple(im.size for im in images), ids)


def decode_squares(tokenizer, f: codec.OtokFile) -> list[Image.Image]:
    """A version-1 file's images at their original sizes."""
    if (f.codebook_size, f.image_size) != (tokenizer.codebook_size, tokenizer.image_size):
        raise codec.OtokError(f"file is for codebook {f.codebook_size} at {f.image_size}px, the tokenizer has "
                              f"{tokenizer.codebook_size} at {tokenizer.image_size}px")
    if f.num_tokens > tokenizer.num_latent_tokens:
        raise codec.OtokError(f"file has {f.num_tokens} tokens per image, the tokenizer at most "
                              f"{tokenizer.num_latent_tokens}")
    squares = to_uint8(tokenizer.decode(torch.from_numpy(f.ids)))  # (B, S, S, 3)
    return [restore_size(sq, w, h, f.fit) for sq, (w, h) in zip(squares, f.sizes)]
