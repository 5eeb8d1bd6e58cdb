"""`onetok compress`, `onetok decompress` and `onetok eval-compression`: images stored as tokenizer ids (.otok).

Images are coded at their own resolution as tiles of the tokenizer's size, each tile with its own token count
(`--tokens`, `--bpp` or `--psnr`; docs/format.md). Without `--tokenizer`, `compress` uses the built-in photo tokenizer
and `decompress` finds the tokenizer by the fingerprint each file carries (built in, or registered by `onetok
export` in $ONETOK_HOME/tokenizers).

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
        files += [Path(root) / n for n in sorted(names) if not n.startswith(".")
                  and (n.lower().endswith(suffix) if suffix else not n.lower().endswith(SIDECARS))]
    return files


SIDECARS = (".txt", ".json")  # captions and metadata beside images (our layout, img2dataset's): not images


def collect(inputs: list[str], suffix: str | None = None, skip_folder: Path | None = None) -> list[Item]:
    """Files given directly, and every non-hidden file below each folder (only `suffix` files if given, else no
    sidecar .txt/.json files; never below `skip_folder`, the output folder, so a second run does not read its own
    outputs)."""
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
    """The RGB image as displayed (`onetok.data.images.load_image`); notes on what was converted go to stderr."""
    from onetok.data.images import ImageReadError, load_image

    try:
        loaded = load_image(path)
    except ImageReadError as err:
        raise UserError(str(err)) from None
    for note in loaded.notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    return loaded.image


def load_tokenizer(directory: str | Path | None):
    """The tokenizer in `directory`, or the built-in photo tokenizer when None."""
    from onetok.tokenizers import Tokenizer, registry

    path = Path(directory) if directory is not None else _builtin()
    if not registry.is_tokenizer_dir(path):
        raise UserError(f"{path}: not a tokenizer folder (needs config.json and model.safetensors)")
    try:
        return Tokenizer.from_pretrained(path).eval()
    except Exception as err:  # noqa: BLE001 - bad JSON, bad safetensors, wrong shapes ...
        raise UserError(f"{path}: cannot load the tokenizer ({type(err).__name__}: {err})".split("\n")[0]) from None


def load_prior(directory: str | Path):
    from onetok.tokenizers import registry
    from onetok.tokenizers.prior import TilePrior

    path = Path(directory)
    if not registry.is_tokenizer_dir(path):
        raise UserError(f"{path}: not a prior folder (needs config.json and model.safetensors)")
    try:
        return TilePrior.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - bad JSON, bad safetensors, wrong shapes ...
        raise UserError(f"{path}: cannot load the prior ({type(err).__name__}: {err})".split("\n")[0]) from None


def load_codec(tokenizer_dir: str | None, prior_dir: str | None = None, entropy: bool = True):
    """The codec: the tokenizer (built-in photo one by default) and, unless `entropy` is off, its prior (`prior_dir`,
    or the `prior/` folder shipped beside the tokenizer when there is one)."""
    from onetok.tokenizers import registry
    from onetok.tokenizers.compress import Codec

    folder = tokenizer_dir or _builtin()
    tok = load_tokenizer(folder)
    if entropy and prior_dir is None:
        prior_dir = registry.prior_beside(folder)
    prior = load_prior(prior_dir) if entropy and prior_dir is not None else None
    try:
        return Codec(tok, prior)
    except ValueError as err:
        raise UserError(f"{prior_dir}: {err}") from None


def _builtin() -> Path:
    from onetok.tokenizers import registry

    try:
        return registry.builtin()
    except FileNotFoundError as err:
        raise UserError(f"{err}; pass --tokenizer DIR") from None


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


def rate_control(args: argparse.Namespace, num_tokens: int):
    from onetok.tokenizers.compress import RateControl

    if args.tokens is not None and not 1 <= args.tokens <= num_tokens:
        raise UserError(f"--tokens {args.tokens}: must be in 1..{num_tokens} (L) for this tokenizer")
    if args.bpp is not None and not args.bpp > 0:
        raise UserError(f"--bpp {args.bpp}: must be positive")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale {args.scale}: must be in (0, 1]")
    return RateControl(args.tokens, args.bpp, args.psnr, args.scale)


def _encode(owner, items: list[Item], rate, single: bool, quiet: bool, skipped: list[str]):
    """Yield (item, encoded image) in input order. Unreadable images are appended to `skipped`, or raised when
    `single`."""
    from tqdm import tqdm

    from onetok.tokenizers import codec

    with tqdm(total=len(items), desc="compress", unit="img", disable=quiet or single) as bar:
        for item in items:
            try:
                image = read_image(item.src)
                if max(image.size) > codec.MAX_SIDE:
                    raise UserError(f"{item.src}: {image.size[0]}x{image.size[1]} px, the format allows "
                                    f"at most {codec.MAX_SIDE} px a side")
            except UserError as err:
                if single:
                    raise
                skipped.append(str(err))
                bar.update(1)
                continue
            encoded = owner.encode(image, rate)
            if not encoded.reached:
                print(f"note: {item.src}: --bpp {rate.bpp} is below the smallest file at this scale (1 token per "
                      f"tile); try --scale < {rate.scale:g}", file=sys.stderr)
            yield item, encoded
            bar.update(1)


def _summary(n: int, total: int, pixels: int, tokens: int, tiles: int, coding: str, skipped: int) -> str:
    bpp = 8 * total / pixels if pixels else float("nan")
    return (f"compressed {n} image(s) into {total} bytes: {bpp:.4f} bits per original pixel, "
            f"{tokens / max(tiles, 1):.2f} tokens per tile on average, ids {coding}; skipped {skipped}")


def cmd_compress(args: argparse.Namespace) -> int:
    from onetok.fileio import atomic_write_bytes
    from onetok.tokenizers import codec

    owner = load_codec(args.tokenizer, args.prior, entropy=not args.no_entropy)
    rate = rate_control(args, owner.tokenizer.num_latent_tokens)
    coding = "entropy-coded" if owner.prior is not None else "bit-packed"
    out = Path(args.out)
    items = collect(args.inputs, skip_folder=out)
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file() and not args.batch
    skipped: list[str] = []
    if single or args.batch:  # one output file
        target = out / (items[0].src.stem + ".otok") if out.is_dir() else out
        check_writable(target, args.force)
        encoded = [enc for _, enc in _encode(owner, items, rate, single, args.quiet, skipped)]
        _report_skipped(skipped)
        if not encoded:
            raise UserError(f"{' '.join(args.inputs)}: no readable images")
        data = codec.dumps(owner.file([enc.image for enc in encoded]))
        atomic_write_bytes(target, data, args.force)
        pixels = sum(enc.image.width * enc.image.height for enc in encoded)
        tokens, tiles = sum(int(enc.counts.sum()) for enc in encoded), sum(len(enc.counts) for enc in encoded)
        print(_summary(len(encoded), len(data), pixels, tokens, tiles, coding, len(skipped)) + f" -> {target}")
        return 0
    _unique([out / item.rel.with_suffix(".otok") for item in items], args.force)
    total = pixels = written = tokens = tiles = 0
    for item, enc in _encode(owner, items, rate, False, args.quiet, skipped):
        data = codec.dumps(owner.file([enc.image]))
        atomic_write_bytes(out / item.rel.with_suffix(".otok"), data, args.force)
        total, pixels, written = total + len(data), pixels + enc.image.width * enc.image.height, written + 1
        tokens, tiles = tokens + int(enc.counts.sum()), tiles + len(enc.counts)
    _report_skipped(skipped)
    print(_summary(written, total, pixels, tokens, tiles, coding, len(skipped)) + f" -> {out}")
    return 0 if written else 1


# --------------------------------------------------------------------------------------------------------------------
# decompress
# --------------------------------------------------------------------------------------------------------------------


def read_otok(path: Path, fp: bytes | None):
    from onetok.tokenizers import codec

    try:
        return codec.loads(path.read_bytes(), fp)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except codec.OtokError as err:
        raise UserError(f"{path}: {err}") from None


class Codecs:
    """The codec for each file: the tokenizer given by --tokenizer or found by the file's fingerprint, and, for an
    entropy-coded file, the prior given by --prior or found by its fingerprint (cached)."""

    def __init__(self, tokenizer_dir: str | None, prior_dir: str | None):
        from onetok.tokenizers import registry

        self.tokenizer_dir, self.prior_dir = tokenizer_dir, prior_dir
        self.fp = bytes.fromhex(registry.fingerprint_dir(tokenizer_dir)) if tokenizer_dir else None
        self.cache: dict[tuple, object] = {}

    def for_file(self, path: Path, f):
        from onetok.tokenizers import registry
        from onetok.tokenizers.compress import Codec

        prior_fp = getattr(f, "prior_fingerprint", None)
        key = (f.fingerprint, prior_fp)
        if key not in self.cache:
            folder = self.tokenizer_dir or registry.find_tokenizer(f.fingerprint.hex())
            if folder is None:
                raise UserError(f"{path}: made with tokenizer {f.fingerprint.hex()[:12]}, which is neither built in "
                                f"nor registered in {registry.registry_dir()}; pass --tokenizer DIR")
            prior = None
            if prior_fp is not None:
                prior_dir = self.prior_dir or registry.find_prior(prior_fp.hex(), [registry.prior_beside(folder)])
                if prior_dir is None:
                    raise UserError(f"{path}: entropy-coded with prior {prior_fp.hex()[:12]}, which is not beside "
                                    f"any known tokenizer; pass --prior DIR")
                prior = load_prior(prior_dir)
            try:
                self.cache[key] = Codec(load_tokenizer(folder), prior)
            except ValueError as err:
                raise UserError(f"{path}: {err}") from None
        return self.cache[key]


def _png_names(base: Path, stem: str, n: int) -> list[Path]:
    """`stem.png` for a one-image file, `stem_000.png ...` for a batch."""
    if n == 1:
        return [base / f"{stem}.png"]
    digits = max(3, len(str(n - 1)))
    return [base / f"{stem}_{i:0{digits}d}.png" for i in range(n)]


def _plan(items: list[Item], codecs: Codecs, out: Path, single: bool, skipped: list[str]) -> list:
    """Validate every file and name every output before anything is written: [(file, codec, targets)]."""
    plans = []
    for item in items:
        try:
            f = read_otok(item.src, codecs.fp)
            owner = codecs.for_file(item.src, f)
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
        plans.append((f, owner, targets))
    return plans


def cmd_decompress(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.tokenizers import codec

    if args.tokenizer:
        load_tokenizer(args.tokenizer)  # a bad folder is an error before any file is read
    codecs = Codecs(args.tokenizer, args.prior)
    items = collect(args.inputs, suffix=".otok")
    out = Path(args.out)
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    skipped: list[str] = []
    plans = _plan(items, codecs, out, single, skipped)
    _unique([t for _, _, targets in plans for t in targets], args.force)
    written = 0
    with tqdm(total=sum(f.num_images for f, _, _ in plans), desc="decompress", unit="img",
              disable=args.quiet or single) as bar:
        for f, owner, targets in plans:
            try:
                images = owner.decode(f)
            except codec.OtokError as err:
                raise UserError(f"{targets[0]}: {err}") from None
            for image, target in zip(images, targets):
                with atomic_output(target, args.force) as tmp:
                    image.save(tmp, format="PNG")
                written += 1
                bar.update(1)
    _report_skipped(skipped)
    where = plans[0][2][0] if written == 1 else out
    print(f"decompressed {len(plans)} file(s) into {written} PNG image(s) -> {where}; skipped {len(skipped)}")
    return 0 if written else 1


# --------------------------------------------------------------------------------------------------------------------
# eval-compression
# --------------------------------------------------------------------------------------------------------------------


def cmd_eval_compression(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from onetok.fileio import atomic_write_bytes
    from onetok.tokenizers import rd

    owner = load_codec(args.tokenizer, args.prior, entropy=not args.no_entropy)
    if not Path(args.images).is_dir():
        raise UserError(f"{args.images}: not a folder")
    if args.max_images < 0:
        raise UserError(f"--max-images {args.max_images}: must be 0 (all) or positive")
    items = collect([args.images])[: args.max_images or None]
    report = Path(args.out)
    outputs = {name: report / name for name in ("rd.csv", "rd.png", "rd.json", "equal_bytes.png")}
    for path in outputs.values():
        check_writable(path, args.force)
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
    codecs = tuple(c for c in rd.pillow_codecs() if c in args.codecs.split(","))
    with tqdm(total=len(images), desc="eval-compression", unit="img", disable=args.quiet) as bar:
        rows = rd.evaluate(owner, names, images, tuple(args.bpp or rd.OTOK_BPPS), codecs, progress=bar.update)
    points = rd.summarize(rows)
    rates = rd.bd_rates(points)
    with atomic_output(outputs["rd.csv"], args.force) as tmp:
        rd.write_csv(rows, tmp)
    coding = "entropy-coded" if owner.prior is not None else "bit-packed"
    title = (f"{len(images)} images from {args.images} at native resolution, tokenizer {args.tokenizer or 'photo'}, "
             f"{coding} ids")
    with atomic_output(outputs["rd.png"], args.force) as tmp:
        rd.plot(points, tmp, title=title)
    summary = {"images": len(images), "ids": coding, "points": [p._asdict() for p in points], "bd_rate_percent": rates}
    atomic_write_bytes(outputs["rd.json"], (json.dumps(summary, indent=1) + "\n").encode(), args.force)
    panels = rd.equal_bytes(owner, images[0], args.compare_bpp, codecs)
    with atomic_output(outputs["equal_bytes.png"], args.force) as tmp:
        rd.plot_equal_bytes(panels, tmp, title=f"{names[0]}: roughly equal bytes")
    print(rd.format_table(points))
    print(rd.format_bd(rates))
    print(f"{len(images)} image(s), skipped {len(skipped)} -> {', '.join(str(p) for p in outputs.values())}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------------------------------


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"need positive numbers, got {text!r}")
    return values


def _entropy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", metavar="DIR",
                   help="the entropy coder's prior (default: the prior/ folder beside the tokenizer, if any)")
    p.add_argument("--no-entropy", action="store_true",
                   help="bit-pack the ids at ceil(log2 K) bits instead of range-coding them with the prior")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="images -> .otok files (tokenizer ids, native resolution, tiled)",
                       description="Code images at their own resolution as tiles of tokenizer ids.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--out", required=True, help="output .otok file (one input image) or folder")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--tokens", type=int, metavar="K", help="the same K tokens for every tile, 1..L (default L)")
    rate.add_argument("--bpp", type=float, metavar="B",
                      help="target size in bits per pixel, the whole file counted; tokens go where they pay most")
    rate.add_argument("--psnr", type=float, metavar="DB", help="per tile, the fewest tokens that reach DB dB")
    p.add_argument("--scale", type=float, default=1.0, metavar="S",
                   help="downscale by S in (0, 1] before coding (resized back on decode; default 1)")
    _entropy_flags(p)
    p.add_argument("--batch", action="store_true", help="write all inputs into the one .otok file OUT")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".otok files -> PNG images at their original size",
                       description="Decode .otok files; the tokenizer is found by each file's fingerprint.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".otok files and/or folders of them")
    p.add_argument("-o", "--out", required=True, help="output PNG (one single-image input) or folder")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="the tokenizer the files were made with (default: found by fingerprint)")
    p.add_argument("--prior", metavar="DIR", help="the prior of entropy-coded files (default: found by fingerprint)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("eval-compression", help="rate-distortion of .otok vs JPEG, WebP and AVIF at native size",
                       description="Rate-distortion at each image's own resolution, every file byte counted.")
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="folder for rd.csv, rd.png, rd.json and equal_bytes.png")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    p.add_argument("--bpp", type=_float_list, metavar="B1,B2,...",
                   help="target sizes for the adaptive .otok curve (default 0.02,0.03,0.05,0.075,0.1,0.15,0.2,0.3)")
    p.add_argument("--codecs", default="jpeg,webp,avif", help="Pillow codecs to compare (default jpeg,webp,avif)")
    _entropy_flags(p)
    p.add_argument("--compare-bpp", type=float, default=0.1, metavar="B",
                   help="target of the equal-bytes picture of the first image (default 0.1)")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="use only the first N images (0 = all)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_compression)
