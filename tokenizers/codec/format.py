"""The `.otok` file format: images stored as nothing but tokenizer ids. The byte layout is specified in
docs/format.md; `dumps` writes it and `loads` reads and validates it (either version).

- Version 2 (`TiledFile`, what `onetok compress` writes): each image at its own resolution as a grid of tiles of
  the tokenizer's size, with its own token count per tile; the ids of all tiles are bit-packed at ceil(log2 K) bits
  each, one stream per image.
- Version 1 (`OtokFile`, read for compatibility): each image fitted to one square of the tokenizer's size, the same
  token count for every image, one byte-aligned record of bit-packed ids per image.

Every file is guarded by a CRC32. `loads` never trusts a length field: it bounds every count by the bytes it was
given before allocating anything, so a corrupt or hostile file costs at most O(len(file)) memory and time. Every
rejection is an `OtokError` (a `ValueError`) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import NamedTuple

import numpy as np

MAGIC = b"OTOK"
VERSION = 2  # what `dumps` writes for a TiledFile
VERSIONS = (1, 2)
FINGERPRINT_BYTES = 16
MAX_SIDE = 65535  # widths and heights are stored as u16
FITS = ("crop", "pad")

# version 1: magic, version, fit, fingerprint, codebook_size, coded size S, tokens k, bits per id, batch count n
_HEADER = struct.Struct(f"<4sBB{FINGERPRINT_BYTES}sIHHBI")
_SIZE = struct.Struct("<HH")  # per image: original width, height
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size  # 35
IMAGE_HEADER_BYTES = _SIZE.size  # 4
CRC_BYTES = _CRC.size  # 4

# version 2: magic, version, payload mode, fingerprint, codebook_size, tile T, max tokens L, bits per id, images n
_HEADER_V2 = struct.Struct(f"<4sBB{FINGERPRINT_BYTES}sIHHBH")
_IMAGE_V2 = struct.Struct("<HHHHB")  # width, height, coded width, coded height, count mode
_K = struct.Struct("<H")
UNIFORM_COUNT_BYTES = _K.size  # the one k of a uniform-count image
HEADER_V2_BYTES = _HEADER_V2.size  # 33
IMAGE_V2_BYTES = _IMAGE_V2.size  # 9
# 0: bit-packed ids; 1: range-coded with the float prior (onetok <= 0.1, read only: its probabilities depend on the
# machine); 2: range-coded with the integer prior (tokenizers/codec/fixedpoint.py: the same bits on every machine)
PAYLOADS = ("packed", "float", "entropy")
_CODED_V2 = struct.Struct("<HHHHHI")  # width, height, coded width, coded height, uniform k (0: per tile), words
CODED_V2_BYTES = _CODED_V2.size  # 14
CHECKSUM_BYTES = 4
COUNT_MODES = ("uniform", "per_tile")  # one k for every tile (u16) | a (k - 1) field of ceil(log2 L) bits per tile


# --------------------------------------------------------------------------------------------------------------------
# FORMAT CONSTANTS of the entropy-coded payloads. Every one of them is part of the bitstream: changing any value
# makes every stored entropy-coded file undecodable (tests/test_stored_files.py fails). A new coder gets a new
# payload code instead (docs/format.md).
# --------------------------------------------------------------------------------------------------------------------

PROB_SCALE = 1 << 16  # payload 1: frequencies floor(PROB_SCALE * p) + 1; payload 2: frequencies sum to PROB_SCALE
CHUNK = 1024  # tiles per batch in the third pass (the order of the coded ids)
BUCKETS = 4  # the count context: quartile of the left and of the upper tile's count (or "none")
COUNT_STEP = 32  # what a coded count adds to its adaptive frequency table (every symbol starts at 1)

# payload 2: the integer prior. A value with F fraction bits is the integer round(real * 2**F).
RES_FRAC, RES_LIMIT = 12, 1 << 21  # the residual stream, clamped to |x| < RES_LIMIT
ACT_FRAC, ACT_LIMIT = 14, 1 << 20  # every other activation (what a matrix product reads), clamped to |x| < ACT_LIMIT
WEIGHT_BITS = 15  # weights: per output channel w * 2**s rounded, s the largest integer with max |w * 2**s| < 2**15
NORM_GUARD = 4  # LayerNorm: extra fraction bits of the integer standard deviation
NORM_RECIPROCAL = 26  # LayerNorm divides by multiplying with floor(2**(ACT_FRAC + NORM_GUARD + 26) / sigma) per row
FREQ_RECIPROCAL = 36  # frequencies: 1 + floor(w * (PROB_SCALE - K) * floor(2**36 / sum w) / 2**36), w the exp weights
GAIN_FRAC = 14  # LayerNorm gain (weight) fraction bits
EXP_FRAC, EXP_ONE = 8, 1 << 16  # exp table: EXP[j] = round(EXP_ONE * exp(-j / 2**EXP_FRAC)) while > 0
GELU_FRAC, GELU_RANGE = 8, 4  # GELU table on [-GELU_RANGE, GELU_RANGE] at steps of 2**-GELU_FRAC (outside: x or 0)
SCORE_SHIFT = 40  # attention scores -> exp-table steps: multiplier isqrt(2**(2 * SCORE_SHIFT - 2 * (2 * ACT_FRAC -
#                   EXP_FRAC)) // head_dim), then a rounding shift by SCORE_SHIFT


class OtokError(ValueError):
    """A byte string that is not a valid `.otok` file for the given tokenizer (message says why)."""


@dataclasses.dataclass(frozen=True)
class OtokFile:
    """The decoded contents of a version-1 `.otok` file (squares, one token count for all images)."""

    fingerprint: bytes  # FINGERPRINT_BYTES, identifies the tokenizer (weights + config)
    codebook_size: int  # K
    image_size: int  # S, the tokenizer's square input size
    fit: str  # "crop" | "pad": how the original was made square
    sizes: tuple[tuple[int, int], ...]  # per image (width, height) of the original
    ids: np.ndarray  # (B, k) int64, each in [0, K)

    @property
    def num_images(self) -> int:
        return self.ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.ids.shape[1]

    def select(self, index: slice) -> OtokFile:
        """The images `index` of this file as a file of their own."""
        return dataclasses.replace(self, sizes=self.sizes[index], ids=self.ids[index])


def concat(files: list[OtokFile]) -> OtokFile:
    """One batch file from files coded with the same tokenizer, fit and token count."""
    first = files[0]
    for f in files[1:]:
        if (f.fingerprint, f.codebook_size, f.image_size, f.fit, f.num_tokens) != (
                first.fingerprint, first.codebook_size, first.image_size, first.fit, first.num_tokens):
            raise OtokError("cannot batch files with different tokenizers, fits or token counts")
    return dataclasses.replace(first, sizes=sum((f.sizes for f in files), ()),
                               ids=np.concatenate([f.ids for f in files]))


@dataclasses.dataclass(frozen=True)
class TiledImage:
    """One image of a version-2 file: a grid of tiles covering the coded size, each with its own token count."""

    width: int  # the original (and decoded) size, px
    height: int
    coded_width: int  # the size the tile grid covers (smaller than the original after a --scale downscale)
    coded_height: int
    counts: np.ndarray  # (N,) int64 tokens per tile, row-major over the grid, each in 1..L
    ids: np.ndarray  # (sum(counts),) int64: tile 0's ids coarse to fine, then tile 1's, ...

    def grid(self, tile: int) -> tuple[int, int]:
        """(rows, cols) of the tile grid for tile size `tile`."""
        return -(-self.coded_height // tile), -(-self.coded_width // tile)

    def tile_ids(self) -> list[np.ndarray]:
        """The ids of each tile, split by `counts`."""
        return np.split(self.ids, np.cumsum(self.counts)[:-1])


@dataclasses.dataclass(frozen=True)
class CodedImage:
    """One image of an entropy-coded version-2 file: the range coder's words, to be decoded with the prior
    (`onetok.tokenizers.codec.entropy`) into a `TiledImage`."""

    width: int
    height: int
    coded_width: int
    coded_height: int
    uniform_k: int  # the one token count of every tile, or 0: per-tile counts are in the stream
    words: np.ndarray  # (m,) uint32, the range coder's output
    checksum: int  # CRC-32 of the counts (u16) and ids (u32), little-endian, tile by tile

    def grid(self, tile: int) -> tuple[int, int]:
        return -(-self.coded_height // tile), -(-self.coded_width // tile)


@dataclasses.dataclass(frozen=True)
class TiledFile:
    """The decoded contents of a version-2 `.otok` file."""

    fingerprint: bytes  # FINGERPRINT_BYTES, identifies the tokenizer (weights + config)
    codebook_size: int  # K
    tile_size: int  # T, the tokenizer's square input size
    max_tokens: int  # L, the tokenizer's token count: every tile has 1..L ids
    images: tuple[TiledImage, ...] | tuple[CodedImage, ...]
    prior_fingerprint: bytes | None = None  # the prior of an entropy-coded file (then images are CodedImage)
    float_coder: bool = False  # entropy-coded by the float prior of onetok <= 0.1 (payload 1, read only)

    @property
    def payload(self) -> str:
        """"packed", "float" (payload 1) or "entropy" (payload 2, the portable integer prior)."""
        if self.prior_fingerprint is None:
            return "packed"
        return "float" if self.float_coder else "entropy"

    @property
    def num_images(self) -> int:
        return len(self.images)


class SizeBreakdown(NamedTuple):
    header: int  # fixed header + per-image size records
    payload: int  # packed ids, byte-aligned per image
    crc: int

    @property
    def total(self) -> int:
        return self.header + self.payload + self.crc


# --------------------------------------------------------------------------------------------------------------------
# Bit packing
# --------------------------------------------------------------------------------------------------------------------


def bits_per_id(codebook_size: int) -> int:
    """ceil(log2(K)) for K >= 2."""
    if codebook_size < 2:
        raise OtokError(f"codebook size {codebook_size} must be at least 2")
    return (codebook_size - 1).bit_length()


def _packed_bits(codebook_size: int) -> int:
    """`bits_per_id`, refused above the 32 bits a packed id may take."""
    bits = bits_per_id(codebook_size)
    if bits > 32:
        raise OtokError(f"codebook size {codebook_size} needs more than 32 bits per id")
    return bits


def _check_id_range(ids: np.ndarray, codebook_size: int) -> None:
    if ids.min() < 0 or ids.max() >= codebook_size:
        raise OtokError(f"token id {int(ids.max())} out of range for codebook size {codebook_size}")


def record_bytes(num_tokens: int, bits: int) -> int:
    """Bytes of one image's packed ids: ceil(k * bits / 8)."""
    return (num_tokens * bits + 7) // 8


def file_size(num_images: int, num_tokens: int, codebook_size: int) -> SizeBreakdown:
    """Exact size of a file: header + n * (size record + ceil(k * bits / 8)) + CRC."""
    payload = num_images * record_bytes(num_tokens, bits_per_id(codebook_size))
    return SizeBreakdown(HEADER_BYTES + num_images * IMAGE_HEADER_BYTES, payload, CRC_BYTES)


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """(n,) non-negative ints < 2**bits -> ceil(n * bits / 8) bytes, MSB first, the last byte zero padded."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    if bits == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bitplane = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)  # (n, bits)
    return np.packbits(bitplane.reshape(-1)).tobytes()


def unpack_bits(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of `pack_bits`; `payload` must be exactly ceil(count * bits / 8) bytes with zero padding bits."""
    if len(payload) != record_bytes(count, bits):
        raise OtokError(f"packed field is {len(payload)} bytes, expected {record_bytes(count, bits)}")
    bitplane = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    if bitplane[count * bits:].any():
        raise OtokError("non-zero padding bits after the last field")
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)  # (bits,)
    return bitplane[: count * bits].reshape(count, bits).astype(np.int64) @ weights  # (count,)


def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """(B, k) non-negative ints < 2**bits -> B records of ceil(k * bits / 8) bytes, MSB first, zero padded."""
    ids = np.asarray(ids, dtype=np.uint64)
    B, k = ids.shape
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bitplane = ((ids[:, :, None] >> shifts) & np.uint64(1)).astype(np.uint8)  # (B, k, bits)
    return np.packbits(bitplane.reshape(B, k * bits), axis=1).tobytes()  # packbits pads each row with zeros


def unpack_ids(payload: bytes, num_images: int, num_tokens: int, bits: int) -> np.ndarray:
    """Inverse of `pack_ids`; `payload` must be exactly num_images * record_bytes long. Rejects non-zero padding."""
    nb = record_bytes(num_tokens, bits)
    if len(payload) != num_images * nb:
        raise OtokError(f"payload is {len(payload)} bytes, expected {num_images * nb}")
    rows = np.frombuffer(payload, dtype=np.uint8).reshape(num_images, nb)
    bitplane = np.unpackbits(rows, axis=1)  # (B, nb * 8)
    if bitplane[:, num_tokens * bits:].any():
        raise OtokError("non-zero padding bits after the last id")
    bitplane = bitplane[:, : num_tokens * bits].reshape(num_images, num_tokens, bits)
    ids = np.zeros((num_images, num_tokens), dtype=np.int64)
    for b in range(bits):  # most significant bit first
        ids = (ids << 1) | bitplane[:, :, b]
    return ids  # (B, k)


# --------------------------------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------------------------------


def _check(f: OtokFile) -> None:
    """Field validation shared by the writer and the reader (the reader has already checked lengths)."""
    if len(f.fingerprint) != FINGERPRINT_BYTES:
        raise OtokError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if f.fit not in FITS:
        raise OtokError(f"fit must be one of {FITS}, not {f.fit!r}")
    if not 1 <= f.image_size <= 0xFFFF:
        raise OtokError(f"coded image size {f.image_size} out of range 1..65535")
    if not np.issubdtype(f.ids.dtype, np.integer):
        raise OtokError(f"ids must be integers, not {f.ids.dtype}")
    if f.ids.ndim != 2 or not 1 <= f.num_images <= 0xFFFFFFFF or not 1 <= f.num_tokens <= 0xFFFF:
        raise OtokError(f"ids must have shape (B >= 1, 1 <= k <= 65535), got {f.ids.shape}")
    if len(f.sizes) != f.num_images:
        raise OtokError(f"{len(f.sizes)} image sizes for {f.num_images} images")
    for width, height in f.sizes:
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise OtokError(f"image size {width}x{height} out of range 1..{MAX_SIDE}")
    _check_id_range(f.ids, f.codebook_size)


def _dumps_v1(f: OtokFile) -> bytes:
    bits = _packed_bits(f.codebook_size)
    _check(f)
    header = _HEADER.pack(MAGIC, 1, FITS.index(f.fit), f.fingerprint, f.codebook_size, f.image_size,
                          f.num_tokens, bits, f.num_images)
    body = header + b"".join(_SIZE.pack(w, h) for w, h in f.sizes) + pack_ids(f.ids, bits)
    return body + _CRC.pack(zlib.crc32(body))


def _loads_v1(data: bytes, fingerprint: bytes | None) -> OtokFile:
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise OtokError(f"truncated file ({len(data)} bytes, the header alone is {HEADER_BYTES + CRC_BYTES})")
    _, _, fit, fp, codebook_size, image_size, k, bits, n = _HEADER.unpack_from(data)
    if not 1 <= bits <= 32:
        raise OtokError(f"{bits} bits per id is out of range 1..32")
    if n == 0 or k == 0:
        raise OtokError(f"empty file ({n} images of {k} tokens)")
    expected = HEADER_BYTES + n * (IMAGE_HEADER_BYTES + record_bytes(k, bits)) + CRC_BYTES  # python int: no overflow
    if len(data) != expected:
        what = "truncated file" if len(data) < expected else "trailing bytes after the CRC"
        raise OtokError(f"{what} ({len(data)} bytes, the header says {expected})")
    _check_crc(data, "the file is corrupt")
    _check_fingerprint(fp, fingerprint)
    if fit >= len(FITS):
        raise OtokError(f"unknown fit mode {fit}")
    if codebook_size < 2 or bits != bits_per_id(codebook_size):
        raise OtokError(f"{bits} bits per id does not match codebook size {codebook_size}")
    sizes_end = HEADER_BYTES + n * IMAGE_HEADER_BYTES
    sizes = tuple(_SIZE.iter_unpack(data[HEADER_BYTES:sizes_end]))
    ids = unpack_ids(data[sizes_end:-CRC_BYTES], n, k, bits)
    f = OtokFile(fp, codebook_size, image_size, FITS[fit], sizes, ids)
    _check(f)
    return f


def _check_fingerprint(found: bytes, expected: bytes | None) -> None:
    if expected is not None and found != expected:
        raise OtokError(f"made with a different tokenizer (fingerprint {found.hex()[:12]}, "
                        f"this tokenizer is {expected.hex()[:12]})")


def ids_checksum(counts: np.ndarray, ids: np.ndarray) -> int:
    """CRC-32 of the token counts (u16) then the ids (u32), little-endian: what an entropy-coded image must decode to."""
    return zlib.crc32(ids.astype("<u4").tobytes(), zlib.crc32(counts.astype("<u2").tobytes()))


def count_bits(max_tokens: int) -> int:
    """Bits of one per-tile count field (k - 1 in 0..L-1): ceil(log2 L)."""
    return (max_tokens - 1).bit_length()


def _check_v2(f: TiledFile) -> None:
    """Field validation of a version-2 file, shared by the writer and the reader."""
    if len(f.fingerprint) != FINGERPRINT_BYTES:
        raise OtokError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not 1 <= f.tile_size <= 0xFFFF or not 1 <= f.max_tokens <= 0xFFFF:
        raise OtokError(f"tile size {f.tile_size} or token count {f.max_tokens} out of range 1..65535")
    if not 1 <= f.num_images <= 0xFFFF:
        raise OtokError(f"{f.num_images} images, a file holds 1..65535")
    if (f.prior_fingerprint is not None) != all(isinstance(im, CodedImage) for im in f.images):
        raise OtokError("an entropy-coded file holds coded images (and a prior fingerprint), a packed one tiled images")
    if f.float_coder and f.prior_fingerprint is None:
        raise OtokError("a float-coder file is entropy-coded: it needs a prior fingerprint")
    if f.prior_fingerprint is not None and len(f.prior_fingerprint) != FINGERPRINT_BYTES:
        raise OtokError(f"prior fingerprint must be {FINGERPRINT_BYTES} bytes")
    for im in f.images:
        sides = (im.width, im.height, im.coded_width, im.coded_height)
        if not all(1 <= v <= MAX_SIDE for v in sides):
            raise OtokError(f"image size {im.width}x{im.height} (coded {im.coded_width}x{im.coded_height}) out of "
                            f"range 1..{MAX_SIDE}")
        if isinstance(im, CodedImage):
            if not 0 <= im.uniform_k <= f.max_tokens or (im.uniform_k == 0 and f.max_tokens == 1):
                raise OtokError(f"token count {im.uniform_k} out of range 0..{f.max_tokens}")
            if im.words.dtype != np.uint32 or im.words.ndim != 1 or not 0 <= im.checksum <= 0xFFFFFFFF:
                raise OtokError("a coded image needs uint32 words and a 32-bit checksum")
            continue
        rows, cols = im.grid(f.tile_size)
        if im.counts.shape != (rows * cols,) or not np.issubdtype(im.counts.dtype, np.integer):
            raise OtokError(f"{im.counts.shape} token counts for a grid of {rows}x{cols} tiles")
        if im.counts.min() < 1 or im.counts.max() > f.max_tokens:
            raise OtokError(f"token counts must lie in 1..{f.max_tokens}")
        if im.ids.shape != (int(im.counts.sum()),) or not np.issubdtype(im.ids.dtype, np.integer):
            raise OtokError(f"{im.ids.shape} ids for {int(im.counts.sum())} tokens")
        _check_id_range(im.ids, f.codebook_size)


def _dumps_v2(f: TiledFile) -> bytes:
    bits = _packed_bits(f.codebook_size)
    _check_v2(f)
    parts = [_HEADER_V2.pack(MAGIC, 2, PAYLOADS.index(f.payload), f.fingerprint, f.codebook_size, f.tile_size,
                             f.max_tokens, bits, f.num_images)]
    if f.prior_fingerprint is not None:
        parts.append(f.prior_fingerprint)
        for im in f.images:
            parts += [_CODED_V2.pack(im.width, im.height, im.coded_width, im.coded_height, im.uniform_k,
                                     len(im.words)), im.words.astype("<u4").tobytes(), _CRC.pack(im.checksum)]
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))
    for im in f.images:
        uniform = bool((im.counts == im.counts[0]).all())
        parts.append(_IMAGE_V2.pack(im.width, im.height, im.coded_width, im.coded_height, 0 if uniform else 1))
        parts.append(_K.pack(int(im.counts[0])) if uniform else pack_bits(im.counts - 1, count_bits(f.max_tokens)))
        parts.append(pack_bits(im.ids, bits))
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


class _Cursor:
    """Reads fields off the bytes before the CRC; running past them is a truncated file."""

    def __init__(self, data: bytes, start: int):
        self.data, self.pos, self.end = data, start, len(data) - CRC_BYTES

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise OtokError(f"truncated file ({len(self.data)} bytes, the fields need at least "
                            f"{self.pos + n + CRC_BYTES})")
        self.pos += n
        return self.data[self.pos - n:self.pos]


def _read_image_v2(cur: _Cursor, tile: int, max_tokens: int, bits: int) -> TiledImage:
    width, height, coded_w, coded_h, mode = _IMAGE_V2.unpack(cur.take(IMAGE_V2_BYTES))
    if 0 in (width, height, coded_w, coded_h):
        raise OtokError(f"image size {width}x{height} (coded {coded_w}x{coded_h}) has a zero side")
    tiles = -(-coded_w // tile) * -(-coded_h // tile)
    if tiles > 8 * cur.left:  # every tile holds at least one id of at least one bit
        raise OtokError(f"truncated file: {tiles} tiles cannot fit in the {cur.left} bytes left")
    if mode == 0:
        (k,) = _K.unpack(cur.take(_K.size))
        if not 1 <= k <= max_tokens:
            raise OtokError(f"{k} tokens per tile is out of range 1..{max_tokens}")
        counts = np.full(tiles, k, dtype=np.int64)
    elif mode == 1 and max_tokens > 1:
        c = count_bits(max_tokens)
        counts = unpack_bits(cur.take(record_bytes(tiles, c)), tiles, c) + 1
        if counts.max() > max_tokens:
            raise OtokError(f"a tile has {int(counts.max())} tokens, at most {max_tokens} allowed")
        if (counts == counts[0]).all():
            raise OtokError("per-tile token counts that are all equal must use the uniform mode")
    else:
        raise OtokError(f"unknown token-count mode {mode}")
    total = int(counts.sum())
    ids = unpack_bits(cur.take(record_bytes(total, bits)), total, bits)
    return TiledImage(width, height, coded_w, coded_h, counts, ids)


def _read_coded_v2(cur: _Cursor, max_tokens: int) -> CodedImage:
    width, height, coded_w, coded_h, uniform_k, words = _CODED_V2.unpack(cur.take(CODED_V2_BYTES))
    if 0 in (width, height, coded_w, coded_h):
        raise OtokError(f"image size {width}x{height} (coded {coded_w}x{coded_h}) has a zero side")
    if uniform_k > max_tokens or (uniform_k == 0 and max_tokens == 1):
        raise OtokError(f"{uniform_k} tokens per tile is out of range 1..{max_tokens}")
    if 4 * words > cur.left:  # python ints: no overflow, nothing allocated yet
        raise OtokError(f"truncated file: {words} coder words cannot fit in the {cur.left} bytes left")
    stream = np.frombuffer(cur.take(4 * words), dtype="<u4").astype(np.uint32)
    (checksum,) = _CRC.unpack(cur.take(CHECKSUM_BYTES))
    return CodedImage(width, height, coded_w, coded_h, uniform_k, stream, checksum)


def _check_crc(data: bytes, what: str) -> None:
    """The last CRC_BYTES are the CRC32 of everything before them."""
    (crc,) = _CRC.unpack_from(data, len(data) - CRC_BYTES)
    if zlib.crc32(data[:-CRC_BYTES]) != crc:
        raise OtokError(f"CRC mismatch: {what}")


def _loads_v2(data: bytes, fingerprint: bytes | None) -> TiledFile:
    if len(data) < HEADER_V2_BYTES + CRC_BYTES:
        raise OtokError(f"truncated file ({len(data)} bytes, the header alone is {HEADER_V2_BYTES + CRC_BYTES})")
    _, _, payload, fp, codebook_size, tile, max_tokens, bits, n = _HEADER_V2.unpack_from(data)
    _check_crc(data, "the file is corrupt or truncated")
    _check_fingerprint(fp, fingerprint)
    if payload >= len(PAYLOADS):
        raise OtokError(f"unknown payload mode {payload}")
    if codebook_size < 2 or bits != bits_per_id(codebook_size) or bits > 32:
        raise OtokError(f"{bits} bits per id does not match codebook size {codebook_size}")
    if 0 in (tile, max_tokens, n):
        raise OtokError(f"tile size {tile}, token count {max_tokens} and image count {n} must be at least 1")
    cur = _Cursor(data, HEADER_V2_BYTES)
    if PAYLOADS[payload] != "packed":
        prior_fp = cur.take(FINGERPRINT_BYTES)
        images = tuple(_read_coded_v2(cur, max_tokens) for _ in range(n))
    else:
        prior_fp, images = None, tuple(_read_image_v2(cur, tile, max_tokens, bits) for _ in range(n))
    if cur.left:
        raise OtokError(f"{cur.left} trailing bytes before the CRC")
    f = TiledFile(fp, codebook_size, tile, max_tokens, images, prior_fp, PAYLOADS[payload] == "float")
    _check_v2(f)
    return f


def dumps(f: OtokFile | TiledFile) -> bytes:
    """Serialise a version-2 `TiledFile` (or a legacy version-1 `OtokFile`); see docs/format.md."""
    return _dumps_v2(f) if isinstance(f, TiledFile) else _dumps_v1(f)


def loads(data: bytes, fingerprint: bytes | None = None) -> OtokFile | TiledFile:
    """Parse and validate `.otok` bytes of either version; with `fingerprint`, also require that tokenizer.
    Raises `OtokError`."""
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise OtokError("not an .otok file (bad magic)")
    if len(data) <= len(MAGIC):
        raise OtokError(f"truncated file ({len(data)} bytes)")
    version = data[len(MAGIC)]
    if version not in VERSIONS:
        raise OtokError(f"unsupported format version {version} (this reader knows versions 1 and 2)")
    return _loads_v1(data, fingerprint) if version == 1 else _loads_v2(data, fingerprint)
