"""Rate-distortion of the tiled `.otok` codec against Pillow's JPEG, WebP and AVIF, at each photo's own resolution.

Every codec is scored the same way on every image: the bytes of the whole file it writes (all headers counted), bits
per pixel over the original width x height, PSNR over the RGB 8-bit output (the mean squared error over all pixels and
channels), and SSIM. `.otok` is measured at fixed token counts k (`otok-fixed`, every tile the same k) and at target
sizes (`otok`, `--bpp`: tokens allocated across tiles by distortion drop per bit; with a prior also `otok-packed`,
the same encoder pass with the ids bit-packed instead of range-coded); JPEG (`optimize=True`), WebP
(`method=6`) and AVIF (`speed=6`, when Pillow has it) over fixed quality grids. Curves are means over the images per
setting.

BD-rate (Bjontegaard, VCEG-M33): the average difference in log rate between two curves over the PSNR range both
cover, each curve fitted by a cubic polynomial of log(bpp) in PSNR; negative means fewer bits for the same PSNR.

SSIM is `onetok.metrics.ssim` (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid positions, per channel).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, features

from onetok.data.pixels import from_hwc
from onetok.metrics import pixel_psnr, ssim
from onetok.tokenizers.codebook_stats import token_counts
from onetok.tokenizers.codec import defaults
from onetok.tokenizers.codec import format as otok
from onetok.tokenizers.codec.codec import Analysis, Codec, RateControl

JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)  # Pillow range 1..95
WEBP_QUALITIES = (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # Pillow range 0..100
AVIF_QUALITIES = (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)  # Pillow range 0..100
OTOK_BPPS = defaults.RD_BPPS
PSNR_CAP = 100.0  # dB, reported for identical images instead of +inf
CODECS = ("otok", "otok-fixed", "otok-packed", "jpeg", "webp", "avif")
CSV_FIELDS = ("image", "codec", "setting", "width", "height", "bytes", "bpp", "psnr", "ssim")


class RDRow(NamedTuple):
    image: str
    codec: str  # one of CODECS
    setting: float  # target bpp (otok, otok-packed), tokens (otok-fixed) or quality (Pillow codecs)
    width: int
    height: int
    bytes: int
    bpp: float
    psnr: float
    ssim: float


class RDPoint(NamedTuple):
    """Mean over images for one codec at one setting."""

    codec: str
    setting: float
    bytes: float
    bpp: float
    psnr: float
    ssim: float


def pillow_codecs() -> tuple[str, ...]:
    """The Pillow codecs this installation can write (AVIF needs Pillow >= 11.3 built with libavif)."""
    return ("jpeg", "webp") + (("avif",) if features.check("avif") else ())


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (`onetok.metrics.pixel_psnr`), capped at PSNR_CAP."""
    return min(PSNR_CAP, pixel_psnr(a, b))


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (`onetok.metrics.ssim`) of two (H, W, 3) uint8 images."""
    return float(ssim(from_hwc([a]), from_hwc([b]))[0])  # a list is stacked into a new (writable) array


def _row(name: str, codec_name: str, setting: float, data_bytes: int, original: np.ndarray,
         decoded: np.ndarray) -> RDRow:
    h, w = original.shape[:2]
    return RDRow(name, codec_name, setting, w, h, data_bytes, 8 * data_bytes / (w * h), psnr(original, decoded),
                 ssim_uint8(original, decoded))


# --------------------------------------------------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------------------------------------------------


def pillow_roundtrip(array: np.ndarray, fmt: str, quality: int) -> tuple[int, np.ndarray]:
    """(bytes, decoded (H, W, 3) uint8) of one image through Pillow's JPEG, WebP or AVIF encoder."""
    buf = io.BytesIO()
    options = {"jpeg": {"format": "JPEG", "optimize": True}, "webp": {"format": "WEBP", "method": 6},
               "avif": {"format": "AVIF", "speed": 6}}[fmt]
    Image.fromarray(array).save(buf, quality=quality, **options)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        return len(data), np.asarray(im.convert("RGB"))


def pillow_rows(name: str, array: np.ndarray, fmt: str, qualities: tuple[int, ...]) -> list[RDRow]:
    rows = []
    for q in qualities:
        size, decoded = pillow_roundtrip(array, fmt, q)
        rows.append(_row(name, fmt, q, size, array, decoded))
    return rows


def otok_file(analysis: Analysis, rate: RateControl) -> tuple[bytes, np.ndarray]:
    """(file bytes, decoded (H, W, 3) uint8) of one image coded with `rate` from a shared analysis."""
    owner = analysis.codec
    f = owner.file([analysis.encode(rate).image])
    data = otok.dumps(f)
    return data, np.asarray(owner.decode_image(f, f.images[0]))


def otok_rows(owner: Codec, name: str, image: Image.Image, tokens: tuple[int, ...],
              bpps: tuple[float, ...]) -> list[RDRow]:
    """`.otok` at each fixed token count and each target bpp, all from one encoder pass over the image."""
    array, analysis = np.asarray(image), owner.analyse(image)
    rows = []
    for k in tokens:
        data, decoded = otok_file(analysis, RateControl(tokens=k))
        rows.append(_row(name, "otok-fixed", k, len(data), array, decoded))
    curves = [("otok", analysis)]
    if owner.prior is not None:  # the same encoder pass, ids bit-packed: what the entropy coder gains
        curves.append(("otok-packed", analysis.packed()))
    for codec_name, coded in curves:
        for bpp in bpps:
            data, decoded = otok_file(coded, RateControl(bpp=bpp))
            rows.append(_row(name, codec_name, bpp, len(data), array, decoded))
    return rows


def fixed_token_counts(num_latent_tokens: int) -> tuple[int, ...]:
    """1, 2, 4, ..., L (and L itself when it is not a power of two): the counts the tokenizer's own metrics use."""
    return tuple(token_counts(num_latent_tokens))


def evaluate(owner: Codec, names: list[str], images: list[Image.Image], bpps: tuple[float, ...] = OTOK_BPPS,
             codecs: tuple[str, ...] | None = None,
             progress: Callable[[int], None] | None = None) -> list[RDRow]:
    """All RD rows for RGB `images` at their own sizes: `.otok` (fixed k and target bpp) and the Pillow codecs."""
    codecs = pillow_codecs() if codecs is None else codecs
    grids = {"jpeg": JPEG_QUALITIES, "webp": WEBP_QUALITIES, "avif": AVIF_QUALITIES}
    tokens = fixed_token_counts(owner.tokenizer.num_latent_tokens)
    rows = []
    for name, image in zip(names, images):
        rows += otok_rows(owner, name, image, tokens, bpps)
        array = np.asarray(image)
        for fmt in codecs:
            rows += pillow_rows(name, array, fmt, grids[fmt])
        if progress:
            progress(1)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Curves and BD-rate
# --------------------------------------------------------------------------------------------------------------------


def summarize(rows: list[RDRow]) -> list[RDPoint]:
    """Mean bytes, bpp, PSNR and SSIM per (codec, setting), in codec order then increasing bpp."""
    groups: dict[tuple[str, float], list[RDRow]] = {}
    for row in rows:
        groups.setdefault((row.codec, row.setting), []).append(row)
    points = [RDPoint(name, setting, *(float(np.mean([getattr(r, f) for r in group]))
                                       for f in ("bytes", "bpp", "psnr", "ssim")))
              for (name, setting), group in groups.items()]
    return sorted(points, key=lambda p: (CODECS.index(p.codec), p.bpp))


def curve(points: list[RDPoint], name: str) -> list[RDPoint]:
    return [p for p in points if p.codec == name]


def bd_rate(reference: list[RDPoint], test: list[RDPoint]) -> float:
    """Bjontegaard delta rate of `test` against `reference` in percent (negative: `test` needs fewer bits for the
    same PSNR), over the PSNR range both curves cover; NaN when they do not overlap or have < 2 points."""
    if len(reference) < 2 or len(test) < 2:
        return float("nan")
    curves = [(np.array([x.psnr for x in pts]), np.log(np.array([x.bpp for x in pts]))) for pts in (reference, test)]
    lo, hi = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
    if hi <= lo:
        return float("nan")
    mid = (lo + hi) / 2  # fit in centred PSNR: better conditioned
    areas = []
    for p, r in curves:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            coeffs = np.polyfit(p - mid, r, min(3, len(p) - 1))
        areas.append(np.diff(np.polyval(np.polyint(coeffs), [lo - mid, hi - mid]))[0])
    return float((np.exp((areas[1] - areas[0]) / (hi - lo)) - 1) * 100)


def bd_rates(points: list[RDPoint]) -> dict[str, float]:
    """BD-rate of `otok` against every other curve present, {"otok vs jpeg": -31.2, ...}, and, when the ids were
    entropy-coded, of the bit-packed curve against the Pillow codecs (the entropy coder's gain is the difference)."""
    rates = {}
    for test in ("otok", "otok-packed"):
        for name in CODECS[CODECS.index(test) + 1:]:
            if curve(points, test) and curve(points, name) and name != "otok-fixed":
                rates[f"{test} vs {name}"] = bd_rate(curve(points, name), curve(points, test))
    if curve(points, "otok-fixed"):
        rates["otok vs otok-fixed"] = bd_rate(curve(points, "otok-fixed"), curve(points, "otok"))
    return rates


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def write_csv(rows: list[RDRow], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r.image, r.codec, f"{r.setting:g}", r.width, r.height, r.bytes, f"{r.bpp:.5f}",
                             f"{r.psnr:.4f}", f"{r.ssim:.5f}"])


def plot(points: list[RDPoint], path: Path, title: str = "") -> None:
    """Mean PSNR and SSIM against bits per pixel (log axis), one curve per codec, written as PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    fig = Figure(figsize=(11, 4.2), dpi=120)
    axes = fig.subplots(1, 2)
    for name in CODECS:
        pts = curve(points, name)
        for ax, metric in zip(axes, ("psnr", "ssim")):
            if pts:
                ax.plot([p.bpp for p in pts], [getattr(p, metric) for p in pts], marker="o", ms=3, label=name,
                        linestyle={"otok-fixed": "--", "otok-packed": ":"}.get(name, "-"))
    for ax, label in zip(axes, ("PSNR (dB, RGB)", "SSIM")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.set_xlabel("bits per pixel (log; whole file)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title or "rate-distortion at native resolution")
    fig.tight_layout()
    fig.savefig(path, format="png")


def format_table(points: list[RDPoint]) -> str:
    """One line per (codec, setting): mean bytes / bpp / PSNR / SSIM."""
    lines = [f"{'codec':<11}{'setting':>8}{'bytes':>9}{'bpp':>8}{'PSNR':>7}{'SSIM':>7}"]
    for p in points:
        lines.append(f"{p.codec:<11}{p.setting:>8g}{p.bytes:>9.0f}{p.bpp:>8.3f}{p.psnr:>7.2f}{p.ssim:>7.3f}")
    return "\n".join(lines)


def format_bd(rates: dict[str, float]) -> str:
    """One line; "no overlap" where the two curves share no PSNR range (e.g. WebP's lowest quality is above L tokens)."""
    return "BD-rate (PSNR): " + ", ".join(f"{k} " + ("no overlap" if np.isnan(v) else f"{v:+.1f}%")
                                          for k, v in rates.items())


def equal_bytes(owner: Codec, image: Image.Image, bpp: float, codecs: tuple[str, ...] | None = None,
                ) -> list[tuple[str, str, int, float, np.ndarray]]:
    """One image through `.otok` at a target bpp and through each Pillow codec at the grid quality nearest in bytes:
    [(codec, setting label, bytes, PSNR, decoded (H, W, 3) uint8)], the original first."""
    codecs = pillow_codecs() if codecs is None else codecs
    grids = {"jpeg": JPEG_QUALITIES, "webp": WEBP_QUALITIES, "avif": AVIF_QUALITIES}
    array = np.asarray(image)
    data, decoded = otok_file(owner.analyse(image), RateControl(bpp=bpp))
    panels = [("original", "", 0, PSNR_CAP, array), ("otok", f"--bpp {bpp:g}", len(data), psnr(array, decoded), decoded)]
    for fmt in codecs:
        trials = [(q, *pillow_roundtrip(array, fmt, q)) for q in grids[fmt]]
        q, size, out = min(trials, key=lambda t: (abs(t[1] - len(data)), t[1]))
        panels.append((fmt, f"q {q}", size, psnr(array, out), out))
    return panels


def plot_equal_bytes(panels: list[tuple[str, str, int, float, np.ndarray]], path: Path, title: str = "") -> None:
    """The panels of `equal_bytes` side by side (full image on top, a 2x centre crop below), written as PNG."""
    from matplotlib.figure import Figure

    h, w = panels[0][4].shape[:2]
    ch, cw = max(1, h // 3), max(1, w // 3)
    top, left = (h - ch) // 2, (w - cw) // 2
    fig = Figure(figsize=(3.2 * len(panels), 2.2 * (h / w) * 3.2 / 2.2 + 3.2 * ch / cw), dpi=110)
    axes = fig.subplots(2, len(panels), squeeze=False)
    for i, (name, setting, size, quality, array) in enumerate(panels):
        label = name if name == "original" else f"{name} {setting}\n{size} B, {8 * size / (h * w):.3f} bpp, {quality:.2f} dB"
        axes[0, i].imshow(array)
        axes[0, i].set_title(label, fontsize=8)
        axes[1, i].imshow(array[top:top + ch, left:left + cw], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle(title or "roughly equal bytes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")


# --------------------------------------------------------------------------------------------------------------------
# The whole report (`onetok eval-compression`)
# --------------------------------------------------------------------------------------------------------------------

REPORT_FILES = defaults.REPORT_FILES


class Report(NamedTuple):
    points: list[RDPoint]
    bd_rates: dict[str, float]  # nan where two curves share no PSNR range


def write_report(owner: Codec, names: list[str], images: list[Image.Image], folder: Path, force: bool,
                 title: str, bpps: tuple[float, ...] = OTOK_BPPS, codecs: tuple[str, ...] | None = None,
                 compare_bpp: float = defaults.COMPARE_BPP, progress: Callable[[int], None] | None = None) -> Report:
    """Evaluate every image, then write `REPORT_FILES` into `folder`, each atomically (replacing an existing one only
    with `force`), and list them in the folder's manifest: a later `force` replaces these files and nothing else."""
    from onetok.fileio import atomic_output, atomic_write_json, write_manifest

    outputs = {name: folder / name for name in REPORT_FILES}
    rows = evaluate(owner, names, images, bpps, codecs, progress=progress)
    points = summarize(rows)
    rates = bd_rates(points)
    with atomic_output(outputs["rd.csv"], force) as tmp:
        write_csv(rows, tmp)
    with atomic_output(outputs["rd.png"], force) as tmp:
        plot(points, tmp, title=title)
    coding = "entropy-coded" if owner.prior is not None else "bit-packed"
    bd = {k: None if np.isnan(v) else v for k, v in rates.items()}  # None: the curves share no PSNR range
    summary = {"images": len(images), "ids": coding, "points": [p._asdict() for p in points], "bd_rate_percent": bd}
    atomic_write_json(outputs["rd.json"], summary, force)
    panels = equal_bytes(owner, images[0], compare_bpp, codecs)
    with atomic_output(outputs["equal_bytes.png"], force) as tmp:
        plot_equal_bytes(panels, tmp, title=f"{names[0]}: roughly equal bytes")
    write_manifest(folder, outputs)
    return Report(points, rates)
