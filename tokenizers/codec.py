"""The `.otok` file format: images stored as nothing but tokenizer ids.

A file holds one image or a batch, all coded with the same tokenizer and the same number of tokens k. The ids are
bit-packed at ceil(log2(codebook_size)) bits each, one byte-aligned record per image, and the whole file is guarded
by a CRC32. The byte layout is specified in docs/format.md; `dumps` writes it and `loads` reads and validates it.

`loads` never trusts a length field: it derives the exact file size from the header and compares it with the bytes
it was given before allocating anything, so a corrupt or hostile file costs at most O(len(file)) memory and time.
Every rejection is an `OtokError` (a `ValueError`) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

MAGIC = b"OTOK"
VERSION = 1
FINGERPRINT_BYTES = 16
MAX_SIDE = 65535  # original width/height are stored as u16
FITS = ("crop", "pad")

# magic, version, fit, fingerprint, codebook_size, coded size S, tokens k, bits per id, batch count n
_HEADER = struct.Struct(f"<4sBB{FINGERPRINT_BYTES}sIHHBI")
_SIZE = struct.Struct("<HH")  # per image: original width, height
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size  # 35
IMAGE_HEADER_BYTES = _SIZE.size  # 4
CRC_BYTES = _CRC.size  # 4


class OtokError(ValueError):
    """A byte string that is not a valid `.otok` file for the given tokenizer (message says why)."""


@dataclasses.dataclass(frozen=True)
class OtokFile:
    """The decoded contents of one `.otok` file."""

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


def record_bytes(num_tokens: int, bits: int) -> int:
    """Bytes of one image's packed ids: ceil(k * bits / 8)."""
    return (num_tokens * bits + 7) // 8


def file_size(num_images: int, num_tokens: int, codebook_size: int) -> SizeBreakdown:
    """Exact size of a file: header + n * (size record + ceil(k * bits / 8)) + CRC."""
    payload = num_images * record_bytes(num_tokens, bits_per_id(codebook_size))
    return SizeBreakdown(HEADER_BYTES + num_images * IMAGE_HEADER_BYTES, payload, CRC_BYTES)


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
    if f.ids.min() < 0 or f.ids.max() >= f.codebook_size:
        raise OtokError(f"token id {int(f.ids.max())} out of range for codebook size {f.codebook_size}")


def dumps(f: OtokFile) -> bytes:
    """Serialise an `OtokFile` (see docs/format.md)."""
    bits = bits_per_id(f.codebook_size)
    if bits > 32:
        raise OtokError(f"codebook size {f.codebook_size} needs more than 32 bits per id")
    _check(f)
    header = _HEADER.pack(MAGIC, VERSION, FITS.index(f.fit), f.fingerprint, f.codebook_size, f.image_size,
                          f.num_tokens, bits, f.num_images)
    body = header + b"".join(_SIZE.pack(w, h) for w, h in f.sizes) + pack_ids(f.ids, bits)
    return body + _CRC.pack(zlib.crc32(body))


def loads(data: bytes, fingerprint: bytes | None = None) -> OtokFile:
    """Parse and validate `.otok` bytes; with `fingerprint`, also require that tokenizer. Raises `OtokError`."""
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise OtokError("not an .otok file (bad magic)")
    if len(data) > len(MAGIC) and data[len(MAGIC)] != VERSION:
        raise OtokError(f"unsupported format version {data[len(MAGIC)]} (this reader knows version {VERSION})")
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
    (crc,) = _CRC.unpack_from(data, len(data) - CRC_BYTES)
    if zlib.crc32(data[:-CRC_BYTES]) != crc:
        raise OtokError("CRC mismatch: the file is corrupt")
    if fingerprint is not None and fp != fingerprint:
        raise OtokError(f"made with a different tokenizer (fingerprint {fp.hex()[:12]}, "
                        f"this tokenizer is {fingerprint.hex()[:12]})")
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


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer fingerprint
# --------------------------------------------------------------------------------------------------------------------


def fingerprint(tokenizer: torch.nn.Module) -> bytes:
    """16 bytes of sha256 over the config (sorted JSON) and every state_dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(b"onetok-fingerprint-v1\0")
    config = dataclasses.asdict(tokenizer.config)
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    state = tokenizer.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:FINGERPRINT_BYTES]


# --------------------------------------------------------------------------------------------------------------------
# Images <-> files
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


def encode_images(tokenizer, images: list[Image.Image], num_tokens: int | None = None, fit: str = "pad",
                  fp: bytes | None = None) -> OtokFile:
    """Fit each image to the tokenizer's square, encode with k = num_tokens (default L) ids each."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    sizes = tuple(image.size for image in images)
    for width, height in sizes:
        if max(width, height) > MAX_SIDE:
            raise ValueError(f"image size {width}x{height} exceeds {MAX_SIDE} px")
    x = to_tensor([fit_square(image, tokenizer.image_size, fit) for image in images])  # (B, 3, S, S)
    ids = tokenizer.encode(x, num_tokens).cpu().numpy().astype(np.int64)  # (B, k)
    fp = fingerprint(tokenizer) if fp is None else fp
    return OtokFile(fp, tokenizer.codebook_size, tokenizer.image_size, fit, sizes, ids)


def reconstruct(tokenizer, f: OtokFile) -> torch.Tensor:
    """The decoded squares (B, 3, S, S) in [0, 1]: exactly `tokenizer.decode(ids)`."""
    if (f.codebook_size, f.image_size) != (tokenizer.codebook_size, tokenizer.image_size):
        raise OtokError(f"file is for codebook {f.codebook_size} at {f.image_size}px, the tokenizer has "
                        f"{tokenizer.codebook_size} at {tokenizer.image_size}px")
    if f.num_tokens > tokenizer.num_latent_tokens:
        raise OtokError(f"file has {f.num_tokens} tokens per image, the tokenizer at most {tokenizer.num_latent_tokens}")
    return tokenizer.decode(torch.from_numpy(f.ids))


def decode_images(tokenizer, f: OtokFile) -> list[Image.Image]:
    """Decoded images at their original sizes."""
    squares = to_uint8(reconstruct(tokenizer, f))  # (B, S, S, 3)
    return [restore_size(sq, w, h, f.fit) for sq, (w, h) in zip(squares, f.sizes)]


def compress(tokenizer, images: list[Image.Image], num_tokens: int | None = None, fit: str = "pad") -> bytes:
    return dumps(encode_images(tokenizer, images, num_tokens, fit))


def decompress(tokenizer, data: bytes) -> list[Image.Image]:
    return decode_images(tokenizer, loads(data, fingerprint(tokenizer)))
