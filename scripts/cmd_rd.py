"""`onetok eval-compression IMAGES_DIR --out REPORT_DIR`: the rate-distortion report of the .otok codec against
JPEG, WebP and AVIF at each image's own resolution, every file byte counted (rd.csv, rd.png, rd.json,
equal_bytes.png; `onetok.tokenizers.codec.rd`). Its report folder lists what it wrote (`.onetok-output`), so a later
`--force` replaces those four files and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onetok.fileio import (
    Inputs,
    UserError,
    check_place,
    check_writable,
    file_ids,
)
from onetok.scripts.arg_types import finite_float, positive_floats
from onetok.scripts.cmd_codec import _entropy_flags, load_codec, read_image
from onetok.scripts.folder_runs import collect, finish, ignored_note, image_skip, skipped_text
from onetok.tokenizers.codec import defaults

CODECS = defaults.RD_CODECS


def _codecs(text: str) -> tuple[str, ...]:
    from onetok.tokenizers.codec import rd

    asked = tuple(c.strip().lower() for c in text.split(",") if c.strip())
    unknown = [c for c in asked if c not in CODECS]
    if unknown:
        raise UserError(f"--codecs {text}: unknown codec {unknown[0]!r} (choose from {', '.join(CODECS)})")
    missing = [c for c in asked if c not in rd.pillow_codecs()]
    if missing:
        print(f"note: this Pillow cannot write {', '.join(missing)}: left out of the comparison", file=sys.stderr)
    return tuple(c for c in asked if c not in missing)


def cmd_eval_compression(args: argparse.Namespace) -> int:
    from onetok.scripts.progress import progress

    if args.max_images < 0:
        raise UserError(f"--max-images {args.max_images}: must be 0 (all) or positive")
    if not args.compare_bpp > 0:
        raise UserError(f"--compare-bpp {args.compare_bpp}: must be positive")
    if not Path(args.images).is_dir():
        raise UserError(f"{args.images}: not a folder")
    report, ignored = Path(args.out), []
    items = collect([args.images], ignored=ignored)[: args.max_images or None]
    protect = Inputs([args.images, args.tokenizer, args.prior], file_ids(item.src for item in items))
    check_place(report, protect)
    for name in defaults.REPORT_FILES:
        check_writable(report / name, args.force, protect)
    owner = load_codec(args.tokenizer, args.prior, entropy=not args.no_entropy)
    from onetok.tokenizers.codec import rd

    codecs = _codecs(args.codecs)
    names, images, skipped = [], [], []
    for item in items:
        try:
            images.append(read_image(item.src))
            names.append(str(item.rel))
        except UserError as err:
            skipped.append(image_skip(err))
    code = finish(len(images), skipped, len(items), Path(args.images), "evaluated")
    coding = "entropy-coded" if owner.prior is not None else "bit-packed"
    title = (f"{len(images)} images from {args.images} at native resolution, tokenizer {args.tokenizer or 'photo'}, "
             f"{coding} ids")
    with progress(len(images), "eval-compression", quiet=args.quiet) as bar:
        result = rd.write_report(owner, names, images, report, args.force, title, tuple(args.bpp or rd.OTOK_BPPS),
                                 codecs, args.compare_bpp, progress=bar.update)
    print(rd.format_table(result.points))
    print(rd.format_bd(result.bd_rates))
    print(f"{len(images)} image(s)" + skipped_text(skipped, 0) + " -> "
          + ", ".join(str(report / name) for name in rd.REPORT_FILES))
    ignored_note(ignored)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-compression", help="rate-distortion of .otok vs JPEG, WebP and AVIF at native size",
                       description="Rate-distortion at each image's own resolution, every file byte counted.")
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="folder for rd.csv, rd.png, rd.json and equal_bytes.png")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    p.add_argument("--bpp", type=positive_floats, metavar="B1,B2,...",
                   help=f"target sizes for the adaptive .otok curve (default {defaults.join(defaults.RD_BPPS)})")
    p.add_argument("--codecs", default=defaults.join(CODECS), metavar="C1,C2,...",
                   help=f"Pillow codecs to compare, of {', '.join(CODECS)} (default %(default)s)")
    _entropy_flags(p)
    p.add_argument("--compare-bpp", type=finite_float, default=defaults.COMPARE_BPP, metavar="B",
                   help="target of the equal-bytes picture of the first image (default %(default)g)")
    p.add_argument("--max-images", type=int, default=0, metavar="N",
                   help="use only the first N images (default %(default)s = all)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_compression)
