"""`onetok bench codec`: wall-clock time to compress and decompress one photo with `.otok` (ids bit-packed, and
entropy-coded when the tokenizer has a prior), beside Pillow's WebP on the same image in the same run.

Default image: a 768 x 512 crop of the bundled sample photo (or `--image PATH`, cropped or padded to `--size`).
Every timing is the median of `--repeats` runs of the library calls a command makes -- the image already decoded,
the tokenizer already loaded (start-up is not counted; `time onetok compress ...` shows that) -- with the torch
thread count of this process (`--threads`, default: torch's).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

RATES = {"k=L": {}, "k=8": {"tokens": 8}, "bpp 0.1": {"bpp": 0.1}, "psnr 25": {"psnr": 25.0}}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (first-call allocations, lazy imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_image(path: str | None, size: tuple[int, int]):
    """The bench image: `path` or the bundled sample, centre-cropped (or mirror-padded) to `size`."""
    import numpy as np
    from PIL import Image

    from onetok.data.images import load_image as read
    from onetok.data.images import sample_photo

    image = read(path or sample_photo()).image
    array = np.asarray(image)
    w, h = size
    pad = ((0, max(0, h - array.shape[0])), (0, max(0, w - array.shape[1])), (0, 0))
    array = np.pad(array, pad, mode="symmetric")
    top, left = (array.shape[0] - h) // 2, (array.shape[1] - w) // 2
    return Image.fromarray(np.ascontiguousarray(array[top:top + h, left:left + w]))


def bench(codecs: dict, image, repeats: int) -> list[dict]:
    """Timings of each `.otok` codec (name -> compress.Codec) at each rate, and of WebP."""
    from PIL import Image

    from onetok.tokenizers.codec.codec import RateControl

    rows = []
    for label, owner in codecs.items():
        for name, rate in RATES.items():
            compress = lambda rate=rate, owner=owner: owner.compress([image], RateControl(**rate))  # noqa: E731
            data = compress()
            rows.append({"codec": f"{label} {name}", "bytes": len(data),
                         "compress_s": _median_seconds(compress, repeats),
                         "decompress_s": _median_seconds(lambda d=data, o=owner: o.decompress(d), repeats)})
    buf = io.BytesIO()

    def webp() -> bytes:
        buf.seek(0)
        buf.truncate()
        image.save(buf, format="WEBP", quality=75, method=4)
        return buf.getvalue()

    data = webp()
    rows.append({"codec": "webp q75 m4", "bytes": len(data), "compress_s": _median_seconds(webp, repeats),
                 "decompress_s": _median_seconds(lambda: Image.open(io.BytesIO(data)).convert("RGB"), repeats)})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    parser.add_argument("--prior", metavar="DIR", help="the entropy coder's prior (default: the one beside the tokenizer)")
    parser.add_argument("--image", metavar="PATH", help="the photo (default: the bundled sample)")
    parser.add_argument("--size", default="768x512", metavar="WxH", help="crop/pad the photo to this size")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from onetok.fileio import UserError
    from onetok.scripts.cmd_codec import load_codec

    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"--size {args.size}: expected WxH, e.g. 768x512") from None
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--repeats and --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    codecs = {"packed": load_codec(args.tokenizer, entropy=False)}
    entropy = load_codec(args.tokenizer, args.prior)
    if entropy.prior is not None:
        codecs["entropy"] = entropy
    rows = bench(codecs, load_image(args.image, size), args.repeats)
    webp = rows[-1]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"codec speed: one {size[0]}x{size[1]} photo, median of {args.repeats}, {torch.get_num_threads()} torch "
          f"thread(s); ratios = time / WebP's time in this run")
    print(f"{'codec':<16}{'bytes':>8}{'bpp':>7}{'compress s':>12}{'x WebP':>8}{'decompress s':>14}{'x WebP':>8}")
    for r in rows:
        print(f"{r['codec']:<16}{r['bytes']:>8}{8 * r['bytes'] / (size[0] * size[1]):>7.3f}{r['compress_s']:>12.3f}"
              f"{r['compress_s'] / webp['compress_s']:>8.1f}{r['decompress_s']:>14.3f}"
              f"{r['decompress_s'] / webp['decompress_s']:>8.1f}")
    return 0
