"""The portable entropy coder (payload 2, integer prior) against the float coder of onetok 0.1 (payload 1), in one run.

    python -m onetok.scripts.bench_portable_coder [--photos DIR] [--repeats N]

1. Saving over bit-packed ids, per photo, at --tokens 4 and 32 for both coders: the real streams' bytes (file
   overhead included, as `onetok compress` writes them) against the bit-packed file of the same ids, averaged over
   the photos of DIR (default ../shared/data/photos/val).
2. Speed on the 768 x 512 bench photo (`onetok bench codec`'s): entropy-encoding and decoding all 32 ids of every
   tile with each coder (the float coder on one thread, as it had to run; the integer coder on 1 and 2 threads), and
   the whole default `compress` / `decompress` with the integer coder on 2 threads. Median of --repeats, with the
   minimum beside it (this machine is shared: the minimum is the least disturbed run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def _times(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _file_bytes(num_tiles: int, k: int, words: int | None) -> int:
    """One uniform-k image: bit-packed (words None) or range-coded with `words` 32-bit words."""
    from onetok.tokenizers.codec import format as otok

    if words is None:
        return (otok.HEADER_V2_BYTES + otok.IMAGE_V2_BYTES + otok.UNIFORM_COUNT_BYTES
                + otok.record_bytes(num_tiles * k, 9) + otok.CRC_BYTES)
    return (otok.HEADER_V2_BYTES + otok.FINGERPRINT_BYTES + otok.CODED_V2_BYTES + 4 * words + otok.CHECKSUM_BYTES
            + otok.CRC_BYTES)


def savings(codec, photos: list[Path]) -> dict:
    """{(coder, k): mean saving over bit-packed, per photo}."""
    import numpy as np

    from onetok.data.images import load_image
    from onetok.tokenizers.codec import entropy

    found: dict = {}
    for path in photos:
        analysis = codec.analyse(load_image(path).image)
        grid, ids = analysis.grid, analysis.ids
        for k in (4, 32):
            counts = np.full(grid.count, k)
            packed = _file_bytes(grid.count, k, None)
            for name, float_coder in (("float", True), ("integer", False)):
                words = entropy.encode(codec.prior, grid.rows, grid.cols, counts, ids, True, float_coder)
                found.setdefault((name, k), []).append(1 - _file_bytes(grid.count, k, len(words)) / packed)
        print(f"  {path.name}: " + ", ".join(f"{n} k={k} {v[-1]:.1%}" for (n, k), v in found.items()), flush=True)
    return {key: sum(v) / len(v) for key, v in found.items()}


def speed(codec, image, repeats: int) -> list[tuple[str, float, float]]:
    import numpy as np
    import torch

    from onetok.tokenizers.codec import entropy
    from onetok.tokenizers.codec import format as otok

    analysis = codec.analyse(image)
    grid, ids = analysis.grid, analysis.ids
    counts = np.full(grid.count, ids.shape[1])
    checksum = otok.ids_checksum(counts, ids.reshape(-1))
    rows = []
    for name, float_coder, threads in (("float coder", True, 1), ("integer coder", False, 1),
                                       ("integer coder", False, 2)):
        torch.set_num_threads(threads)
        words = entropy.encode(codec.prior, grid.rows, grid.cols, counts, ids, True, float_coder)
        rows.append((f"{name} encode, {threads} thread(s)", *_times(
            lambda f=float_coder: entropy.encode(codec.prior, grid.rows, grid.cols, counts, ids, True, f), repeats)))
        rows.append((f"{name} decode, {threads} thread(s)", *_times(
            lambda w=words, f=float_coder: entropy.decode(codec.prior, grid.rows, grid.cols, w, 32, checksum, f),
            repeats)))
    torch.set_num_threads(2)
    data = codec.compress([image])
    rows.append(("compress (default: all tokens, integer coder), 2 threads", *_times(lambda: codec.compress([image]),
                                                                                     repeats)))
    rows.append(("decompress, 2 threads", *_times(lambda: codec.decompress(data), repeats)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="../shared/data/photos/val", help="folder of photos for the savings")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", choices=("all", "savings", "speed"), default="all", help="what to measure")
    args = parser.parse_args(argv)
    from onetok.scripts.bench_codec import load_image
    from onetok.scripts.cmd_codec import load_codec

    codec = load_codec(None)
    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.part != "speed":
        print(f"saving over bit-packed ids, mean per photo, {len(photos)} photos of {args.photos}:")
        for (name, k), value in sorted(savings(codec, photos).items()):
            print(f"  {name:8s} coder, --tokens {k:2d}: {value:.1%}")
    if args.part == "savings":
        return
    print(f"speed on the 768x512 bench photo (median / min of {args.repeats} s):")
    rows = speed(codec, load_image(None, (768, 512)), args.repeats)
    base = {"encode": rows[0][1], "decode": rows[1][1]}  # the float coder's medians, this run
    for name, median, least in rows:
        op = "encode" if " encode" in name else "decode"
        ratio = f"  ({median / base[op]:.2f}x the float coder)" if name.startswith("integer coder") else ""
        print(f"  {name:58s} {median:6.2f} / {least:6.2f}{ratio}")


if __name__ == "__main__":
    main()
