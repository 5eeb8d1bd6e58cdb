"""`onetok compress`, `onetok decompress` and `onetok eval-compression`: images stored as tokenizer ids (.otok).

One input file -> one output file. Several inputs, or a folder -> an output folder mirroring the input names
(`a.png` -> `a.otok` -> `a.png`); in that mode unreadable images and corrupt `.otok` files are skipped, listed and
counted instead of stopping the run. `--batch` packs all inputs into one `.otok` file, which decompresses to
`NAME_000.png`, `NAME_001.png`, ... Every output is written atomically and never replaces a file without --force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import UserError, atomic_output, check_writable

CHUNK = 32  # images encoded / decoded per forward pass


class Item(NamedTuple):
    src: Path  # input file
    rel: Path  # its name below the output folder


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def _walk(folder: Path, suffix: str | None, skip_folder: Path | None) -> list[Path]:
    def fail(err: OSError) -> None:
        raise UserError(f"{err.filename}: unreadable folder ({err.strerror})")

    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"{folder}: unreadable folder")
    files = []
    for root, dirs, names in os.walk(folder, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip_folder)
        files += [Path(root) / n for n in sorted(names)
                  if not n.startswith(".") and (suffix is None or n.lower().endswith(suffix))]
    return files


def collect(inputs: list[str], suffix: str | None = None, skip_folder: Path | None = None) -> list[Item]:
    """Files given directly, and every non-hidden file below each folder (only `suffix` files if given; never
    below `skip_folder`, the output folder, so a second run does not read its own outputs)."""
    skip_folder = skip_folder.resolve() if skip_folder is not None else None
    items = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            items += [Item(f, f.relative_to(path)) for f in _walk(path, suffix, skip_folder)]
        elif path.is_file():
            items.append(Item(path, Path(path.name)))
        else:
            raise UserError(f"{path}: no such file or folder")
    if not items:
        raise UserError(f"{' '.join(inputs)}: no input files found")
    return items


def read_image(path: Path):
    """A fully decoded RGB PIL image, EXIF orientation applied; UserError naming the file otherwise."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here, not later
            image = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as err:  # noqa: BLE001 - Pillow plugins raise many types for corrupt data
        raise UserError(f"{path}: not a readable image ({type(err).__name__}: {err})".split("\n")[0]) from None
    return image


def load_tokenizer(directory: str):
    from onetok.tokenizers import Tokenizer

    path = Path(directory)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UserError(f"{path}: not a tokenizer folder (needs config.json and model.safetensors)")
    try:
        return Tokenizer.from_pretrained(path).eval()
    except Exception as err:  # noqa: BLE001 - bad JSON, bad safetensors, wrong shapes ...
        raise UserError(f"{path}: cannot load the tokenizer ({type(err).__name__}: {err})".split("\n")[0]) from None


def _unique(targets: list[Path], force: bool) -> None:
    """Refuse duplicate output names and (without --force) existing outputs, before anything is written."""
    seen: set[Path] = set()
    for t in targets:
        if t in seen:
            raise UserError(f"{t}: two inputs map to this output name")
        seen.add(t)
        check_writable(t, force)


def _report_skipped(skipped: list[str]) -> None:
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------------------------------


def _encode(tok, items: list[Item], k: int, fit: str, fp: bytes, single: bool, quiet: bool, skipped: list[str]):
    """Yield (item, single-image OtokFile) in input order, CHUNK images per forward pass. Unreadable images are
    appended to `skipped`, or raised when `single`."""
    from tqdm import tqdm

    from onetok.tokenizers import codec

    with tqdm(total=len(items), desc="compress", unit="img", disable=quiet or single) as bar:
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            good, images = [], []
            for item in chunk:
                try:
                    image = read_image(item.src)
                    if max(image.size) > codec.MAX_SIDE:
                        raise UserError(f"{item.src}: {image.size[0]}x{image.size[1]} px, the format allows "
                                        f"at most {codec.MAX_SIDE} px a side")
                except UserError as err:
                    if single:
                        raise
                    skipped.append(str(err))
                    continue
                good.append(item)
                images.append(image)
            if images:
                f = codec.encode_images(tok, images, k, fit, fp)
                yield from ((item, f.select(slice(i, i + 1))) for i, item in enumerate(good))
            bar.update(len(chunk))


def _summary(n: int, k: int, codebook_size: int, total: int, pixels: int, skipped: int, batch: bool) -> str:
    from onetok.tokenizers import codec

    size = codec.file_size(n if batch else 1, k, codebook_size)
    layout = f"{size.header} header + {size.payload} ids + {size.crc} CRC"
    bpp = 8 * total / pixels if pixels else float("nan")
    return (f"compressed {n} image(s) at {k} tokens x {codec.bits_per_id(codebook_size)} bits: {total} bytes "
            f"({'one file: ' if batch else 'per file: '}{layout}), {bpp:.4f} bits per original pixel; "
            f"skipped {skipped}")


def cmd_compress(args: argparse.Namespace) -> int:
    from onetok.fileio import atomic_write_bytes
    from onetok.tokenizers import codec

    tok = load_tokenizer(args.tokenizer)
    k = tok.num_latent_tokens if args.tokens is None else args.tokens
    if not 1 <= k <= tok.num_latent_tokens:
        raise UserError(f"--tokens {k}: must be in 1..{tok.num_latent_tokens} for this tokenizer")
    out = Path(args.out)
    items = collect(args.inputs, skip_folder=out)
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file() and not args.batch
    fp = codec.fingerprint(tok)
    skipped: list[str] = []
    if single or args.batch:  # one output file
        target = out / (items[0].src.stem + ".otok") if out.is_dir() else out
        check_writable(target, args.force)
        encoded = [f for _, f in _encode(tok, items, k, args.fit, fp, single, args.quiet, skipped)]
        _report_skipped(skipped)
        if not encoded:
            raise UserError(f"{' '.join(args.inputs)}: no readable images")
        f = codec.concat(encoded)
        data = codec.dumps(f)
        atomic_write_bytes(target, data, args.force)
        pixels = sum(w * h for w, h in f.sizes)
        print(_summary(f.num_images, k, f.codebook_size, len(data), pixels, len(skipped), args.batch) + f" -> {target}")
        return 0
    _unique([out / item.rel.with_suffix(".otok") for item in items], args.force)
    total = pixels = written = 0
    for item, f in _encode(tok, items, k, args.fit, fp, False, args.quiet, skipped):
        data = codec.dumps(f)
        atomic_write_bytes(out / item.rel.with_suffix(".otok"), data, args.force)
        total, pixels, written = total + len(data), pixels + f.sizes[0][0] * f.sizes[0][1], written + 1
    _report_skipped(skipped)
    print(_summary(written, k, tok.codebook_size, total, pixels, len(skipped), False) + f" -> {out}")
    return 0 if written else 1


# --------------------------------------------------------------------------------------------------------------------
# decompress
# --------------------------------------------------------------------------------------------------------------------


def read_otok(path: Path, fp: bytes):
    from onetok.tokenizers import codec

    try:
        return codec.loads(path.read_bytes(), fp)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except codec.OtokError as err:
        raise UserError(f"{path}: {err}") from None


def _png_names(base: Path, stem: str, n: int) -> list[Path]:
    """`stem.png` for a one-image file, `stem_000.png ...` for a batch."""
    if n == 1:
        return [base / f"{stem}.png"]
    digits = max(3, len(str(n - 1)))
    return [base / f"{stem}_{i:0{digits}d}.png" for i in range(n)]


def cmd_decompress(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.tokenizers import codec

    tok = load_tokenizer(args.tokenizer)
    fp = codec.fingerprint(tok)
    items = collect(args.inputs, suffix=".otok")
    out = Path(args.out)
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    plans, skipped = [], []  # pass 1: validate every file and name every output before writing anything
    for item in items:
        try:
            f = read_otok(item.src, fp)
        except UserError as err:
            if single:
                raise
            skipped.append(str(err))
            continue
        if single and f.num_images == 1 and not out.is_dir():
            targets = [out]
        else:
            base = out if single else out / item.rel.parent
            targets = _png_names(base, item.src.stem, f.num_images)
        plans.append((f, targets))
    _unique([t for _, targets in plans for t in targets], args.force)
    written = 0
    with tqdm(total=sum(f.num_images for f, _ in plans), desc="decompress", unit="img",
              disable=args.quiet or single) as bar:
        for f, targets in plans:  # pass 2: decode and write
            for start in range(0, f.num_images, CHUNK):
                for image, target in zip(codec.decode_images(tok, f.select(slice(start, start + CHUNK))),
                                         targets[start:start + CHUNK]):
                    with atomic_output(target, args.force) as tmp:
                        image.save(tmp, format="PNG")
                    written += 1
                    bar.update(1)
    _report_skipped(skipped)
    where = plans[0][1][0] if written == 1 else out
    print(f"decompressed {len(plans)} file(s) into {written} PNG image(s) -> {where}; skipped {len(skipped)}")
    return 0 if written else 1


# --------------------------------------------------------------------------------------------------------------------
# eval-compression
# --------------------------------------------------------------------------------------------------------------------


def cmd_eval_compression(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.tokenizers import rd

    tok = load_tokenizer(args.tokenizer)
    if not Path(args.images).is_dir():
        raise UserError(f"{args.images}: not a folder")
    items = collect([args.images])[: args.max_images or None]
    report = Path(args.out)
    csv_path, png_path = report / "rd.csv", report / "rd.png"
    check_writable(csv_path, args.force)
    check_writable(png_path, args.force)
    names, images, skipped = [], [], []
    for item in items:
        try:
            images.append(read_image(item.src))
            names.append(str(item.rel))
        except UserError as err:
            skipped.append(str(err))
    _report_skipped(skipped)
    if not images:
        raise UserError(f"{args.images}: no readable images")
    with tqdm(total=len(images), desc="eval-compression", unit="img", disable=args.quiet) as bar:
        rows = rd.evaluate(tok, names, images, args.fit, progress=bar.update)
    points = rd.summarize(rows)
    with atomic_output(csv_path, args.force) as tmp:
        rd.write_csv(rows, tmp)
    with atomic_output(png_path, args.force) as tmp:
        rd.plot(points, tmp, title=f"{len(images)} images from {args.images}, tokenizer {args.tokenizer} "
                                  f"({tok.image_size}px, K={tok.codebook_size})")
    print(rd.format_table(points))
    print(f"{len(images)} image(s) at {tok.image_size}px ({args.fit}), skipped {len(skipped)}; JPEG/WebP at the "
          f"grid quality nearest in bytes -> {csv_path}, {png_path}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="images -> .otok files (tokenizer ids only)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--out", required=True, help="output .otok file (one input image) or folder")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (config.json + weights)")
    p.add_argument("--tokens", type=int, metavar="K", help="tokens per image, 1..L (default L): the rate control")
    p.add_argument("--fit", choices=["pad", "crop"], default="pad",
                   help="non-square images: letterbox (pad, default) or centre-crop to the tokenizer's square")
    p.add_argument("--batch", action="store_true", help="write all inputs into the one .otok file OUT")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".otok files -> PNG images at their original size")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".otok files and/or folders of them")
    p.add_argument("-o", "--out", required=True, help="output PNG (one single-image input) or folder")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the tokenizer the files were made with")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("eval-compression", help="rate-distortion of .otok vs JPEG and WebP (rd.csv, rd.png)")
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for rd.csv and rd.png")
    p.add_argument("--tokenizer", required=True, metavar="DIR")
    p.add_argument("--fit", choices=["pad", "crop"], default="pad")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="use only the first N images (0 = all)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_compression)
