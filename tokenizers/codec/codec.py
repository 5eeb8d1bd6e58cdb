"""Images <-> `.otok` files: the tiled codec (version 2), and decoding of legacy square files (version 1).

`Codec(tokenizer, prior=None).encode` codes one RGB image at its own resolution: an optional downscale (`scale`),
the tile grid (`onetok.tokenizers.codec.tiling`), one encoder pass for all L ids of every tile, then the rate control picks
each tile's token count -- the same k everywhere (`tokens`), the smallest k reaching a PSNR per tile (`psnr`), or a
target size for the whole file in bits per pixel with every byte counted (`bpp`; with a prior, the bits the range
coder really spends on each id). The ids are bit-packed, or entropy-coded with the prior (`onetok.tokenizers.codec.entropy`).
`Codec.decode_image` inverts it: tiles decoded from their prefixes, the grid cropped to the coded size, and the image
resized back to its original size when it was downscaled. The byte format itself belongs to
`onetok.tokenizers.codec.format`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from onetok.data.images import MAX_PIXELS
from onetok.data.pixels import from_hwc, to_hwc
from onetok.tokenizers.codec import entropy, tiling
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.codec import rate as rc
from onetok.tokenizers.registry import fingerprint

DOWNSCALE = Image.Resampling.LANCZOS
UPSCALE = Image.Resampling.BICUBIC


class RateControl(NamedTuple):
    """How many tokens each tile gets; exactly one of tokens / bpp / psnr is set (all None = L tokens)."""

    tokens: int | None = None  # the same k for every tile
    bpp: float | None = None  # target bits per pixel of the original image, the whole file counted
    psnr: float | None = None  # per tile, the smallest k whose reconstruction reaches this many dB
    scale: float = 1.0  # downscale before tiling (0 < scale <= 1); decoding resizes back to the original size


class Encoded(NamedTuple):
    image: otok.TiledImage | otok.CodedImage
    counts: np.ndarray  # (N,) tokens per tile
    reached: bool  # False when a --bpp target is below the smallest possible file (every tile at 1 token)


def coded_size(width: int, height: int, scale: float) -> tuple[int, int]:
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    return max(1, round(width * scale)), max(1, round(height * scale))


def packed_overhead_bits(num_tiles: int, max_tokens: int, per_tile_counts: bool) -> int:
    """Bits of a one-image bit-packed file that are not ids: header, image record, token counts, CRC."""
    counts = otok.record_bytes(num_tiles, otok.count_bits(max_tokens)) if per_tile_counts else otok.UNIFORM_COUNT_BYTES
    return 8 * (otok.HEADER_V2_BYTES + otok.IMAGE_V2_BYTES + counts + otok.CRC_BYTES)


ENTROPY_OVERHEAD_BITS = 8 * (otok.HEADER_V2_BYTES + otok.FINGERPRINT_BYTES + otok.CODED_V2_BYTES
                             + otok.CHECKSUM_BYTES + otok.CRC_BYTES + 4)  # + the coder's last partial word


class Codec:
    """A tokenizer, and optionally the prior that entropy-codes its ids: what turns images into `.otok` files and
    back. Without a prior the ids are bit-packed."""

    def __init__(self, tokenizer, prior=None):
        self.tokenizer, self.prior = tokenizer, prior
        self.fingerprint = fingerprint(tokenizer)
        self.prior_fingerprint = fingerprint(prior) if prior is not None else None
        if prior is not None:
            recorded = getattr(prior, "tokenizer_fingerprint", None)
            c = prior.config
            if (c.codebook_size, c.num_tokens) != (tokenizer.codebook_size, tokenizer.num_latent_tokens) or \
                    (recorded is not None and recorded != self.fingerprint.hex()):
                raise ValueError(f"the prior models another tokenizer's ids (tokenizer {str(recorded)[:12]}, "
                                 f"K={c.codebook_size}, L={c.num_tokens}; this one is {self.fingerprint.hex()[:12]})")

    # ---- encoding ---------------------------------------------------------------------------------------------------

    def analyse(self, image: Image.Image, scale: float = 1.0) -> Analysis:
        return Analysis(self, image, scale)

    def encode(self, image: Image.Image, rate: RateControl | None = None) -> Encoded:
        """One RGB image -> its tiled ids and per-tile token counts (see the module docstring)."""
        rate = rate or RateControl()
        return self.analyse(image, rate.scale).encode(rate)

    def file(self, images: list[otok.TiledImage | otok.CodedImage]) -> otok.TiledFile:
        t = self.tokenizer
        return otok.TiledFile(self.fingerprint, t.codebook_size, t.image_size, t.num_latent_tokens, tuple(images),
                               self.prior_fingerprint)

    def compress(self, images: list[Image.Image], rate: RateControl | None = None) -> bytes:
        return otok.dumps(self.file([self.encode(im, rate).image for im in images]))

    # ---- decoding ---------------------------------------------------------------------------------------------------

    def check(self, f: otok.TiledFile) -> None:
        t = self.tokenizer
        if (f.codebook_size, f.tile_size) != (t.codebook_size, t.image_size) or f.max_tokens > t.num_latent_tokens:
            raise otok.OtokError(f"file is for codebook {f.codebook_size}, {f.tile_size}px tiles and up to "
                                  f"{f.max_tokens} tokens; the tokenizer has {t.codebook_size}, {t.image_size}px "
                                  f"and {t.num_latent_tokens}")
        if f.prior_fingerprint is not None and f.prior_fingerprint != self.prior_fingerprint:
            have = self.prior_fingerprint.hex()[:12] if self.prior_fingerprint else "none"
            raise otok.OtokError(f"entropy-coded with prior {f.prior_fingerprint.hex()[:12]}, this codec's prior is "
                                  f"{have}")

    def ids(self, f: otok.TiledFile, im: otok.TiledImage | otok.CodedImage) -> otok.TiledImage:
        """The ids of one image of a file: as stored, or decoded from the entropy-coded stream."""
        if isinstance(im, otok.TiledImage):
            return im
        rows, cols = im.grid(f.tile_size)
        counts, ids = entropy.decode(self.prior, rows, cols, im.words, im.uniform_k, im.checksum, f.float_coder)
        return otok.TiledImage(im.width, im.height, im.coded_width, im.coded_height, counts, ids)

    def decode_image(self, f: otok.TiledFile, im: otok.TiledImage | otok.CodedImage) -> Image.Image:
        """One image of a version-2 file at its original size."""
        self.check(f)
        if im.width * im.height > MAX_PIXELS:
            raise otok.OtokError(f"{im.width}x{im.height} px is more than the {MAX_PIXELS:,} pixels a decoded "
                                  f"image may have")
        im = self.ids(f, im)
        grid = tiling.TileGrid(im.coded_width, im.coded_height, f.tile_size)
        padded = np.zeros((grid.count, int(im.counts.max())), dtype=np.int64)  # (N, max k), ids left-aligned
        padded[np.arange(padded.shape[1])[None, :] < im.counts[:, None]] = im.ids
        array = tiling.untile(tiling.decode_tiles(self.tokenizer, padded, im.counts), grid)
        decoded = Image.fromarray(tiling.refine(self.tokenizer, array))
        return decoded if decoded.size == (im.width, im.height) else decoded.resize((im.width, im.height), UPSCALE)

    def decode(self, f: otok.OtokFile | otok.TiledFile) -> list[Image.Image]:
        if isinstance(f, otok.TiledFile):
            return [self.decode_image(f, im) for im in f.images]
        return decode_squares(self.tokenizer, f)

    def decompress(self, data: bytes) -> list[Image.Image]:
        """Either version; the file must carry this tokenizer's (and prior's) fingerprint."""
        return self.decode(otok.loads(data, self.fingerprint))


class Analysis:
    """One image cut into tiles and encoded once (all L ids per tile). The squared error of a tile at a token count
    (measured only where a rate control asks for it), and (with a prior) the bits of every id, are computed on first
    use and shared by every rate-control setting asked of it."""

    def __init__(self, owner: Codec, image: Image.Image, scale: float = 1.0):
        self.codec, self.tokenizer, (self.width, self.height) = owner, owner.tokenizer, image.size
        if max(self.width, self.height) > otok.MAX_SIDE:
            raise ValueError(f"image size {self.width}x{self.height} exceeds {otok.MAX_SIDE} px a side")
        self.coded = coded_size(self.width, self.height, scale)
        small = image if self.coded == image.size else image.resize(self.coded, DOWNSCALE)
        self.tiles, self.grid = tiling.tile_image(np.asarray(small.convert("RGB"), dtype=np.uint8),
                                                  self.tokenizer.image_size)
        self.ids = tiling.encode_tiles(self.tokenizer, self.tiles)  # (N, L)
        measure = rc.decoder_measure(self.tokenizer, self.tiles, self.ids, self.grid)
        self.distortion = rc.Distortion(measure, self.grid.count, self.tokenizer.num_latent_tokens)
        self._bits: np.ndarray | None = None

    def packed(self) -> Analysis:
        """The same tiles, ids and errors under the bit-packed format (no prior): what entropy coding saves."""
        twin = copy.copy(self)
        twin.codec, twin._bits = Codec(self.tokenizer), None
        return twin

    @property
    def bits(self) -> np.ndarray:
        """(N, L) bits of each id: ceil(log2 K) bit-packed, or about what the range coder spends under the prior
        (`entropy.estimate_bits`)."""
        if self._bits is None:
            if self.codec.prior is None:
                self._bits = np.full(self.ids.shape, float(otok.bits_per_id(self.tokenizer.codebook_size)))
            else:
                self._bits = entropy.estimate_bits(self.codec.prior, self.grid.rows, self.grid.cols, self.ids)
        return self._bits

    def size_bits(self, counts: np.ndarray) -> float:
        """The file size in bits of one image with these counts (exact when bit-packed; an estimate within a few
        bytes of the range coder's output otherwise)."""
        uniform = bool((counts == counts[0]).all())
        if self.codec.prior is None:
            L = self.tokenizer.num_latent_tokens
            ids = otok.record_bytes(int(counts.sum()), otok.bits_per_id(self.tokenizer.codebook_size))
            return packed_overhead_bits(len(counts), L, not uniform) + 8 * ids
        ids = float(self.bits[np.arange(self.bits.shape[1])[None, :] < counts[:, None]].sum())
        counts_bits = 0.0 if uniform else entropy.count_bits(counts, self.grid.rows, self.grid.cols,
                                                             self.tokenizer.num_latent_tokens)
        return ENTROPY_OVERHEAD_BITS + ids + counts_bits

    def counts(self, rate: RateControl, shrink: float = 0.0) -> tuple[np.ndarray, bool]:
        """Per-tile token counts (N,) for the rate control, and whether a bpp target was reachable; `shrink` bits
        come off a bpp target (what the coded stream overshot the estimate by)."""
        L = self.tokenizer.num_latent_tokens
        if rate.bpp is None and rate.psnr is None:
            k = L if rate.tokens is None else rate.tokens
            if not 1 <= k <= L:
                raise ValueError(f"tokens must be in 1..{L} for this tokenizer, got {k}")
            return rc.fixed_counts(self.grid, k), True
        if rate.psnr is not None:
            return rc.counts_for_psnr(self.distortion, self.grid.valid_pixels(), rate.psnr), True
        target = rate.bpp * self.width * self.height
        counts = self._counts_for_bits(target - shrink)
        return counts, bool(self.size_bits(np.ones_like(counts)) <= target)

    def _counts_for_bits(self, target: float) -> np.ndarray:
        """Greedy allocation of the id bits: fitted to the file size on the half-octave counts, refined around each
        tile's choice (`rate.refine_allocation`), fitted again on all measured counts."""
        cost = np.cumsum(self.bits, axis=1)  # (N, L): bits of the first k ids
        budget = target - self.size_bits(np.ones(self.grid.count, dtype=np.int64)) + cost[:, 0].sum()
        self.distortion.need_all(rc.allocation_counts(self.tokenizer.num_latent_tokens))
        _, budget = self._fit(cost, budget, target)
        rc.refine_allocation(self.distortion, cost, budget)
        return self._fit(cost, budget, target)[0]

    def _fit(self, cost: np.ndarray, budget: float, target: float) -> tuple[np.ndarray, float]:
        """(counts, id budget) allocated over the measured counts; the budget shrinks by any overshoot of the whole
        file (overhead and counts included) until the file fits."""
        for _ in range(8):
            counts = rc.allocate_bits(self.distortion.sse, cost, budget) + 1
            overshoot = self.size_bits(counts) - target
            if overshoot <= 0 or (counts == 1).all():
                break
            budget -= overshoot + 8
        return counts, budget

    def encode(self, rate: RateControl) -> Encoded:
        """The image coded at the rate control's counts. With a prior and a bpp target, the coded stream is
        measured: where it overshoots the estimate that chose the counts, the counts are chosen again for a target
        that much smaller (no new decoder passes)."""
        shrink = 0.0
        for _ in range(RETRIES):
            counts, reached = self.counts(rate, shrink)
            coded = self._code(counts)
            if self.codec.prior is None or rate.bpp is None or not reached:
                break
            over = self._coded_bits(coded) - rate.bpp * self.width * self.height
            if over <= 0:
                break
            shrink += over + 32
        return Encoded(coded, counts, reached)

    def _code(self, counts: np.ndarray) -> otok.TiledImage | otok.CodedImage:
        mask = np.arange(self.ids.shape[1])[None, :] < counts[:, None]
        size = (self.width, self.height, *self.coded)
        if self.codec.prior is None:
            return otok.TiledImage(*size, counts, self.ids[mask])  # ids tile by tile
        uniform = bool((counts == counts[0]).all())
        words = entropy.encode(self.codec.prior, self.grid.rows, self.grid.cols, counts, self.ids, uniform)
        return otok.CodedImage(*size, int(counts[0]) if uniform else 0, words,
                               otok.ids_checksum(counts, self.ids[mask]))

    def _coded_bits(self, coded: otok.CodedImage) -> int:
        """The size in bits of a one-image file holding `coded`."""
        return 8 * len(otok.dumps(self.codec.file([coded])))


RETRIES = 4  # bpp targets: codings of the stream at most (the estimate is within a few bytes: one almost always)


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


def encode_squares(tokenizer, images: list[Image.Image], num_tokens: int | None = None, fit: str = "pad",
                   fp: bytes | None = None) -> otok.OtokFile:
    """A version-1 file: each image fitted to the tokenizer's square and encoded with k = num_tokens (default L)."""
    if fit not in otok.FITS:
        raise ValueError(f"fit must be one of {otok.FITS}, not {fit!r}")
    x = from_hwc([fit_square(image, tokenizer.image_size, fit) for image in images])  # (B, 3, S, S)
    ids = tokenizer.encode(x, num_tokens).cpu().numpy().astype(np.int64)  # (B, k)
    fp = fingerprint(tokenizer) if fp is None else fp
    return otok.OtokFile(fp, tokenizer.codebook_size, tokenizer.image_size, fit, tuple(im.size for im in images), ids)


def decode_squares(tokenizer, f: otok.OtokFile) -> list[Image.Image]:
    """A version-1 file's images at their original sizes."""
    if (f.codebook_size, f.image_size) != (tokenizer.codebook_size, tokenizer.image_size):
        raise otok.OtokError(f"file is for codebook {f.codebook_size} at {f.image_size}px, the tokenizer has "
                              f"{tokenizer.codebook_size} at {tokenizer.image_size}px")
    if f.num_tokens > tokenizer.num_latent_tokens:
        raise otok.OtokError(f"file has {f.num_tokens} tokens per image, the tokenizer at most "
                              f"{tokenizer.num_latent_tokens}")
    squares = to_hwc(tokenizer.decode(torch.from_numpy(f.ids)))  # (B, S, S, 3)
    return [restore_size(sq, w, h, f.fit) for sq, (w, h) in zip(squares, f.sizes)]
