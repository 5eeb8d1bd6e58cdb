"""Rate-distortion evaluation of `.otok` compression against Pillow's JPEG and WebP.

Every image is first fitted to the tokenizer's square (crop or pad, as `onetok compress` does), and all codecs are
scored on that square: bytes, bits per pixel (over S*S pixels), PSNR and SSIM of the decoded uint8 image. For each
token count k in 1, 2, 4, ..., L the `.otok` file size is the exact single-image file (header + ids + CRC). JPEG
and WebP are run over a fixed quality grid (not every value, to stay fast) and, per image, the quality whose byte
size is nearest to the `.otok` file at that k is reported (ties go to the smaller file).

SSIM follows Wang et al. 2004 (IEEE TIP, "Image quality assessment: from error visibility to structural
similarity"): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, per channel, averaged over the
valid window positions and the channels. Images smaller than 11 px use the largest odd window that fits.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from onetok.tokenizers import codec
from onetok.tokenizers.metrics import psnr

JPEG_QUALITIES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)  # Pillow range 1..95
WEBP_QUALITIES = (0, 2, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95, 100)  # Pillow range 0..100
PSNR_CAP = 100.0  # dB, reported for identical images instead of +inf
CODECS = ("otok", "jpeg", "webp")
CSV_FIELDS = ("image", "codec", "setting", "tokens", "bytes", "bpp", "psnr", "ssim")


class RDRow(NamedTuple):
    image: str
    codec: str  # "otok" | "jpeg" | "webp"
    setting: int  # tokens for otok, quality for jpeg/webp
    tokens: int  # the token count this row is compared at
    bytes: int
    bpp: float
    psnr: float
    ssim: float


class RDPoint(NamedTuple):
    """Mean over images for one codec at one token count."""

    codec: str
    tokens: int
    bytes: float
    bpp: float
    psnr: float
    ssim: float


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _blur_matrix(n: int, size: int, sigma: float) -> torch.Tensor:
    """(n - size + 1, n) matrix whose rows are the 1D Gaussian window at each valid position."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    rows = torch.arange(n - size + 1)[:, None]
    m = torch.zeros(n - size + 1, n, dtype=torch.float64)
    m[rows, rows + torch.arange(size)] = g / g.sum()
    return m


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images (B, C, H, W) in [0, 1] -> (B,)."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _, _, H, W = a.shape
    size = min(window, H, W)
    size -= 1 - size % 2  # largest odd window that fits
    mh, mw = _blur_matrix(H, size, sigma * size / window), _blur_matrix(W, size, sigma * size / window)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian over valid positions, as two matmuls
        return mh @ x @ mw.T  # (B, C, H - size + 1, W - size + 1)

    a, b = a.double().clamp(0, 1), b.double().clamp(0, 1)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1).float()


def _scores(reference: torch.Tensor, decoded: torch.Tensor) -> tuple[list[float], list[float]]:
    """(PSNR capped at PSNR_CAP, SSIM) per image of (B, 3, S, S) float tensors."""
    p = psnr(reference, decoded).clamp(max=PSNR_CAP)
    return p.tolist(), ssim(reference, decoded).tolist()


# --------------------------------------------------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------------------------------------------------


def token_counts(num_latent_tokens: int) -> list[int]:
    """1, 2, 4, ..., L (and L itself when it is not a power of two)."""
    return sorted({min(2**i, num_latent_tokens) for i in range(num_latent_tokens.bit_length() + 1)})


def pillow_roundtrip(square: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """(bytes, decoded (S, S, 3) uint8) of one image through Pillow's JPEG or WebP encoder."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(square).save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        Image.fromarray(square).save(buf, format="WEBP", quality=quality, method=4)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        return len(data), np.asarray(im.convert("RGB"))


def otok_rows(tokenizer, names: list[str], squares: list[np.ndarray], counts: list[int]) -> list[RDRow]:
    """Encode/decode every square at every token count; the size is the exact single-image file size."""
    x = codec.to_tensor(squares)  # (B, 3, S, S)
    S = tokenizer.image_size
    rows = []
    for k in counts:
        decoded = codec.to_uint8(tokenizer.decode(tokenizer.encode(x, k)))  # (B, S, S, 3), what a PNG would hold
        size = codec.file_size(1, k, tokenizer.codebook_size).total
        psnrs, ssims = _scores(x, codec.to_tensor(list(decoded)))
        rows += [RDRow(n, "otok", k, k, size, 8 * size / (S * S), p, s) for n, p, s in zip(names, psnrs, ssims)]
    return rows


def pillow_rows(fmt: str, qualities: tuple[int, ...], names: list[str], squares: list[np.ndarray],
                targets: dict[int, int]) -> list[RDRow]:
    """Per image, the grid quality whose byte size is nearest to each target (token count -> bytes)."""
    rows = []
    for name, square in zip(names, squares):
        sizes, decoded = zip(*(pillow_roundtrip(square, fmt, q) for q in qualities))
        reference = codec.to_tensor([square] * len(qualities))
        psnrs, ssims = _scores(reference, codec.to_tensor(list(decoded)))
        S2 = square.shape[0] * square.shape[1]
        for k, target in targets.items():
            i = min(range(len(qualities)), key=lambda j: (abs(sizes[j] - target), sizes[j]))
            rows.append(RDRow(name, fmt, qualities[i], k, sizes[i], 8 * sizes[i] / S2, psnrs[i], ssims[i]))
    return rows


def evaluate(tokenizer, names: list[str], images: list[Image.Image], fit: str = "pad", batch_size: int = 32,
             progress: Callable[[int], None] | None = None) -> list[RDRow]:
    """All RD rows for `images` (PIL, any size) through the tokenizer, JPEG and WebP."""
    counts = token_counts(tokenizer.num_latent_tokens)
    targets = {k: codec.file_size(1, k, tokenizer.codebook_size).total for k in counts}
    rows = []
    for start in range(0, len(images), batch_size):
        chunk_names = names[start:start + batch_size]
        squares = [codec.fit_square(im, tokenizer.image_size, fit) for im in images[start:start + batch_size]]
        rows += otok_rows(tokenizer, chunk_names, squares, counts)
        rows += pillow_rows("jpeg", JPEG_QUALITIES, chunk_names, squares, targets)
        rows += pillow_rows("webp", WEBP_QUALITIES, chunk_names, squares, targets)
        if progress:
            progress(len(squares))
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def summarize(rows: list[RDRow]) -> list[RDPoint]:
    """Mean bytes, bpp, PSNR and SSIM per (codec, token count), in codec then token order."""
    groups: dict[tuple[str, int], list[RDRow]] = {}
    for row in rows:
        groups.setdefault((row.codec, row.tokens), []).append(row)
    points = []
    for (name, k), group in sorted(groups.items(), key=lambda item: (CODECS.index(item[0][0]), item[0][1])):
        mean = [float(np.mean([getattr(r, f) for r in group])) for f in ("bytes", "bpp", "psnr", "ssim")]
        points.append(RDPoint(name, k, *mean))
    return points


def write_csv(rows: list[RDRow], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r.image, r.codec, r.setting, r.tokens, r.bytes, f"{r.bpp:.5f}", f"{r.psnr:.4f}",
                             f"{r.ssim:.5f}"])


def plot(points: list[RDPoint], path: Path, title: str = "") -> None:
    """bpp vs PSNR and bpp vs SSIM, one curve per codec, written as PNG (Agg, no pyplot state)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    fig = Figure(figsize=(10, 4), dpi=120)
    axes = fig.subplots(1, 2)
    for name in CODECS:
        pts = [p for p in points if p.codec == name]
        if not pts:
            continue
        for ax, metric in zip(axes, ("psnr", "ssim")):
            ax.plot([p.bpp for p in pts], [getattr(p, metric) for p in pts], marker="o", label=name)
            if name == "otok":
                for p in pts:
                    ax.annotate(f"k={p.tokens}", (p.bpp, getattr(p, metric)), fontsize=7,
                                xytext=(3, -9), textcoords="offset points")
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("bits per pixel (log)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title or "rate-distortion: .otok vs JPEG vs WebP (JPEG/WebP at the nearest byte size)")
    fig.tight_layout()
    fig.savefig(path, format="png")


def format_table(points: list[RDPoint]) -> str:
    """One line per token count: mean bytes / bpp / PSNR / SSIM for each codec."""
    by_key = {(p.codec, p.tokens): p for p in points}
    counts = sorted({p.tokens for p in points})
    head = f"{'k':>4} " + " ".join(f"| {name:<6}{'bytes':>7} {'bpp':>7} {'PSNR':>6} {'SSIM':>6} " for name in CODECS)
    lines = [head, "-" * len(head)]
    for k in counts:
        cells = []
        for name in CODECS:
            p = by_key.get((name, k))
            cells.append(f"| {'':<6}{p.bytes:7.0f} {p.bpp:7.3f} {p.psnr:6.2f} {p.ssim:6.3f} " if p else
                         f"| {'':<6}{'-':>7} {'-':>7} {'-':>6} {'-':>6} ")
        lines.append(f"{k:>4} " + " ".join(cells))
    return "\n".join(lines)

