"""The defaults of the codec's commands and benchmarks, in one torch-free place: the library functions take them as
default arguments and the command-line help texts format them in (`onetok --help` imports no torch)."""

from __future__ import annotations

# onetok compress
SCALE = 1.0  # no downscale before tiling

# onetok eval-compression
RD_BPPS = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)  # the adaptive .otok curve's target sizes
RD_CODECS = ("jpeg", "webp", "avif")  # Pillow codecs compared
COMPARE_BPP = 0.1  # the equal-bytes picture of the first image
REPORT_FILES = ("rd.csv", "rd.png", "rd.json", "equal_bytes.png")  # what it writes into its report folder

# onetok bench codec / portable-coder
BENCH_SIZE = (768, 512)  # the bench photo: the bundled sample, centre-cropped (or mirror-padded) to this size
BENCH_REPEATS = 5  # timed runs per case of `onetok bench codec` (median)
PORTABLE_REPEATS = 3  # timed runs per case of `onetok bench portable-coder` (median and minimum)
PORTABLE_TOKENS = (4, 32)  # the token counts at which the saving over bit-packed ids is measured
PHOTOS = "../shared/data/photos/val"  # the photos of the saving


def join(values) -> str:
    """`1,2,3`: a tuple of defaults as a help text (and the flag) writes it."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
