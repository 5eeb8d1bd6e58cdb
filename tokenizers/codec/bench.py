"""Benchmarks of the `.otok` codec (`onetok bench codec`, `onetok bench portable-coder`); the commands only parse,
call these and print.

- `codec_speed`: wall-clock time to compress and decompress one photo with each codec (ids bit-packed, and
  range-coded when there is a prior) at each rate control of `RATES`, beside Pillow's WebP on the same image in the
  same run. The library calls a command makes, the image already decoded and the models loaded (start-up is not
  counted; `time onetok compress ...` shows that), with this process's torch thread count.
- `portable_savings`: the saving of the range coder over bit-packed ids, per photo, for the portable coder (payload
  2, integer prior) and the float coder of onetok 0.1 (payload 1), the real streams' bytes with the file overhead.
- `portable_speed`: entropy-coding and decoding all L ids of every tile of the bench photo with each coder (the
  float coder on one thread, as it had to run; the integer coder on 1 and 2 threads), and the whole default
  `compress` / `decompress` on 2 threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from onetok.data.images import image_files, load_image, sample_photo
from onetok.timing import median_time
from onetok.tokenizers.codec import defaults, entropy
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.codec.codec import Codec, RateControl

RATES = {"k=L": RateControl(), "k=8": RateControl(tokens=8), "bpp 0.1": RateControl(bpp=0.1),
         "psnr 25": RateControl(psnr=25.0)}


class SpeedRow(NamedTuple):
    codec: str  # "<codec> <rate>", or WebP's settings
    bytes: int
    compress_s: float  # median
    decompress_s: float


class CoderTime(NamedTuple):
    what: str
    median_s: float
    min_s: float


def bench_image(path: str | Path | None = None, size: tuple[int, int] = defaults.BENCH_SIZE) -> Image.Image:
    """The bench photo: `path` or the bundled sample, centre-cropped (or mirror-padded) to `size` (W, H)."""
    array = np.asarray(load_image(path or sample_photo()).image)  # (H, W, 3)
    w, h = size
    pad = ((0, max(0, h - array.shape[0])), (0, max(0, w - array.shape[1])), (0, 0))
    array = np.pad(array, pad, mode="symmetric")
    top, left = (array.shape[0] - h) // 2, (array.shape[1] - w) // 2
    return Image.fromarray(np.ascontiguousarray(array[top:top + h, left:left + w]))


def _webp(image: Image.Image, repeats: int) -> SpeedRow:
    import io

    def compress() -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="WEBP", quality=75, method=4)
        return buf.getvalue()

    data = compress()
    decompress = lambda: Image.open(io.BytesIO(data)).convert("RGB")  # noqa: E731
    return SpeedRow("webp q75 m4", len(data), median_time(compress, repeats=repeats).median_s,
                    median_time(decompress, repeats=repeats).median_s)


def codec_speed(codecs: dict[str, Codec], image: Image.Image, repeats: int = defaults.BENCH_REPEATS) -> list[SpeedRow]:
    """Median times of each codec (label -> Codec) at each rate of `RATES`; WebP's row last."""
    rows = []
    for label, codec in codecs.items():
        for name, rate in RATES.items():
            compress = median_time(lambda c=codec, r=rate: c.compress([image], r), repeats=repeats)
            data = compress.result
            decompress = median_time(lambda c=codec, d=data: c.decompress(d), repeats=repeats)
            rows.append(SpeedRow(f"{label} {name}", len(data), compress.median_s, decompress.median_s))
    return rows + [_webp(image, repeats)]


def format_speed(rows: list[SpeedRow], size: tuple[int, int], repeats: int) -> str:
    webp = rows[-1]
    lines = [f"codec speed: one {size[0]}x{size[1]} photo, median of {repeats}, {torch.get_num_threads()} torch "
             f"thread(s); ratios = time / WebP's time in this run",
             f"{'codec':<16}{'bytes':>8}{'bpp':>7}{'compress s':>12}{'x WebP':>8}{'decompress s':>14}{'x WebP':>8}"]
    for r in rows:
        lines.append(f"{r.codec:<16}{r.bytes:>8}{8 * r.bytes / (size[0] * size[1]):>7.3f}{r.compress_s:>12.3f}"
                     f"{r.compress_s / webp.compress_s:>8.1f}{r.decompress_s:>14.3f}"
                     f"{r.decompress_s / webp.decompress_s:>8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# The portable coder against the float coder of onetok 0.1
# --------------------------------------------------------------------------------------------------------------------


def file_bytes(num_tiles: int, k: int, codebook_size: int, words: int | None) -> int:
    """One uniform-k image: bit-packed (words None) or range-coded with `words` 32-bit words."""
    if words is None:
        return (otok.HEADER_V2_BYTES + otok.IMAGE_V2_BYTES + otok.UNIFORM_COUNT_BYTES
                + otok.record_bytes(num_tiles * k, otok.bits_per_id(codebook_size)) + otok.CRC_BYTES)
    return (otok.HEADER_V2_BYTES + otok.FINGERPRINT_BYTES + otok.CODED_V2_BYTES + 4 * words + otok.CHECKSUM_BYTES
            + otok.CRC_BYTES)


def photo_savings(codec: Codec, image: Image.Image, tokens=defaults.PORTABLE_TOKENS) -> dict[tuple[str, int], float]:
    """{(coder, k): 1 - range-coded bytes / bit-packed bytes} of one photo, every tile at k tokens."""
    analysis = codec.analyse(image)
    grid, ids, K = analysis.grid, analysis.ids, codec.tokenizer.codebook_size
    found = {}
    for k in tokens:
        counts = np.full(grid.count, k)
        packed = file_bytes(grid.count, k, K, None)
        for name, float_coder in (("float", True), ("integer", False)):
            words = entropy.encode(codec.prior, grid.rows, grid.cols, counts, ids, True, float_coder)
            found[name, k] = 1 - file_bytes(grid.count, k, K, len(words)) / packed
    return found


def portable_savings(codec: Codec, photos: str | Path = defaults.PHOTOS, report=None,
                     tokens=defaults.PORTABLE_TOKENS) -> dict[tuple[str, int], float]:
    """{(coder, k): mean saving over bit-packed, per photo} over the images below `photos`; `report(name, found)`
    after each photo."""
    totals: dict[tuple[str, int], list[float]] = {}
    for path in image_files(photos):
        found = photo_savings(codec, load_image(path).image, tokens)
        for key, value in found.items():
            totals.setdefault(key, []).append(value)
        if report:
            report(path.name, found)
    return {key: sum(v) / len(v) for key, v in totals.items()}


def _time(what: str, fn, repeats: int) -> CoderTime:
    timing = median_time(fn, repeats=repeats)
    return CoderTime(what, timing.median_s, min(timing.seconds))


def portable_speed(codec: Codec, image: Image.Image, repeats: int = defaults.PORTABLE_REPEATS) -> list[CoderTime]:
    """Entropy encode / decode of all ids with each coder and thread count, then the whole default compress and
    decompress on 2 threads; the torch thread count is restored."""
    analysis = codec.analyse(image)
    grid, ids = analysis.grid, analysis.ids
    counts = np.full(grid.count, ids.shape[1])
    checksum = otok.ids_checksum(counts, ids.reshape(-1))
    encode = lambda f: entropy.encode(codec.prior, grid.rows, grid.cols, counts, ids, True, f)  # noqa: E731
    rows, threads = [], torch.get_num_threads()
    try:
        for name, float_coder, n in (("float coder", True, 1), ("integer coder", False, 1),
                                     ("integer coder", False, 2)):
            torch.set_num_threads(n)
            words = encode(float_coder)
            rows.append(_time(f"{name} encode, {n} thread(s)", lambda f=float_coder: encode(f), repeats))
            rows.append(_time(f"{name} decode, {n} thread(s)", lambda w=words, f=float_coder: entropy.decode(
                codec.prior, grid.rows, grid.cols, w, ids.shape[1], checksum, f), repeats))
        torch.set_num_threads(2)
        data = codec.compress([image])
        rows.append(_time("compress (default: all tokens, integer coder), 2 threads",
                          lambda: codec.compress([image]), repeats))
        rows.append(_time("decompress, 2 threads", lambda: codec.decompress(data), repeats))
    finally:
        torch.set_num_threads(threads)
    return rows


def format_portable_speed(rows: list[CoderTime]) -> str:
    base = {"encode": rows[0].median_s, "decode": rows[1].median_s}  # the float coder's medians, this run
    lines = []
    for r in rows:
        op = "encode" if " encode" in r.what else "decode"
        ratio = f"  ({r.median_s / base[op]:.2f}x the float coder)" if r.what.startswith("integer coder") else ""
        lines.append(f"  {r.what:58s} {r.median_s:6.2f} / {r.min_s:6.2f}{ratio}")
    return "\n".join(lines)
