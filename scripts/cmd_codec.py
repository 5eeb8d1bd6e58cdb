"""`onetok compress`, `onetok decompress` and `onetok eval-compression`: images stored as tokenizer ids (.otok).

Images are coded at their own resolution as tiles of the tokenizer's size, each tile with its own token count
(`--tokens`, `--bpp` or `--psnr`; docs/format.md), the ids range-coded with the prior shipped beside the tokenizer
(`--no-entropy`: bit-packed). Without `--tokenizer`, `compress` uses the built-in photo tokenizer and `decompress`
finds the tokenizer (and the prior) by the fingerprints each file carries (built in, or registered by `onetok
export` in $ONETOK_HOME/tokenizers).

Outputs are named by what they hold: one input file -> the file OUT (`.otok` for compress, `.png` for decompress) or
OUT/NAME.otok when OUT is a folder; several inputs or a folder -> an output folder mirroring the input names (`a.png`
-> `a.otok` -> `a.png`); `--batch` packs all inputs into the one `.otok` file OUT, which decompresses to
`NAME_000.png`, `NAME_001.png`, ... In folder mode unreadable images and corrupt `.otok` files are skipped, listed and
counted (exit code 1 when any was), and each output is written as soon as it is finished: an interrupted run keeps
the finished files and `--resume` does the rest. Every output is written atomically, never replaces a file without
--force, and never replaces one of the inputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import (
    Inputs,
    UserError,
    atomic_output,
    check_place,
    check_writable,
    file_ids,
    load_error,
    png_info,
)
from onetok.scripts.arg_types import finite_float
from onetok.scripts.devices import add_threads_arg, check_threads, use_threads
from onetok.scripts.folder_runs import (  # noqa: F401 - Item and collect are this module's API too
    Item,
    Skip,
    Totals,
    check_targets,
    collect,
    finish,
    ignored_note,
    image_skip,
    interrupted,
    output_kind,
    png_names,
    single_input,
    skipped_text,
    unique_targets,
    write_failed,
)
from onetok.tokenizers.codec import defaults
from onetok.tokenizers.codec.models import UnknownModel

# --------------------------------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------------------------------


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


def tokenizer_dir(directory: str | Path | None) -> Path:
    """The folder of the tokenizer to use (the built-in photo tokenizer when None), checked without loading it."""
    from onetok.tokenizers import registry

    if directory is None:
        try:
            directory = registry.builtin()
        except FileNotFoundError as err:
            raise UserError(f"{err}; pass --tokenizer DIR") from None
    path = Path(directory)
    if not registry.is_tokenizer_dir(path):
        raise UserError(f"{path}: not a tokenizer folder (needs config.json and model.safetensors)")
    return path


def load_tokenizer(directory: str | Path | None, device: str = "cpu"):
    """The tokenizer in `directory` (the built-in photo tokenizer when None) on `device`."""
    path = tokenizer_dir(directory)
    from onetok.scripts.cli import import_torch

    import_torch()
    from onetok.tokenizers import Tokenizer

    try:
        return Tokenizer.from_pretrained(path, map_location=device).eval()
    except Exception as err:  # noqa: BLE001 - bad JSON, bad safetensors, wrong shapes ...
        raise load_error(path, "tokenizer", err) from None


def load_prior(directory: str | Path):
    from onetok.tokenizers import registry
    from onetok.tokenizers.codec.prior import TilePrior

    path = Path(directory)
    if not registry.is_tokenizer_dir(path):
        raise UserError(f"{path}: not a prior folder (needs config.json and model.safetensors)")
    try:
        return TilePrior.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - bad JSON, bad safetensors, wrong shapes ...
        raise load_error(path, "prior", err) from None


def load_codec(directory: str | Path | None, prior_dir: str | Path | None = None, entropy: bool = True):
    """The codec: the tokenizer (the built-in photo one when None) and, unless `entropy` is off, its prior
    (`prior_dir`, or the `prior/` folder shipped beside the tokenizer when there is one)."""
    from onetok.tokenizers import registry

    folder = tokenizer_dir(directory)
    tok = load_tokenizer(folder)
    from onetok.tokenizers.codec.codec import Codec

    if entropy and prior_dir is None:
        prior_dir = registry.prior_beside(folder)
    prior = load_prior(prior_dir) if entropy and prior_dir is not None else None
    try:
        return Codec(tok, prior)
    except ValueError as err:
        raise UserError(f"{prior_dir}: {err}") from None


# --------------------------------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------------------------------


def check_rate_flags(args: argparse.Namespace) -> None:
    """The rate flags that can be checked without the tokenizer."""
    if args.tokens is not None and args.tokens < 1:
        raise UserError(f"--tokens {args.tokens}: must be at least 1 (and at most L, the tokenizer's tokens per tile)")
    if args.bpp is not None and not args.bpp > 0:
        raise UserError(f"--bpp {args.bpp}: must be positive")
    if args.psnr is not None and not args.psnr > 0:
        raise UserError(f"--psnr {args.psnr}: must be positive")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale {args.scale}: must be in (0, 1]")


def rate_control(args: argparse.Namespace, num_tokens: int):
    from onetok.tokenizers.codec.codec import RateControl

    check_rate_flags(args)
    if args.tokens is not None and args.tokens > num_tokens:
        raise UserError(f"--tokens {args.tokens}: must be in 1..{num_tokens} (L, the tokens per tile of this "
                        "tokenizer)")
    return RateControl(args.tokens, args.bpp, args.psnr, args.scale)


class Encoder:
    """Reads and encodes one input at a time; notes once per run when an input is far outside the tokenizer's data."""

    def __init__(self, owner, rate, trained_on: str | None):
        self.owner, self.tok, self.rate, self.trained_on, self.warned = owner, owner.tokenizer, rate, trained_on, False

    def __call__(self, src: Path):
        """The `compress.Encoded` image of `src`; UserError for an unreadable or too large image."""
        from onetok.tokenizers import domain
        from onetok.tokenizers.codec import format as otok

        image = read_image(src)
        if max(image.size) > otok.MAX_SIDE:
            raise UserError(f"{src}: {image.size[0]}x{image.size[1]} px, the format allows at most {otok.MAX_SIDE} "
                            "px a side")
        analysis = self.owner.analyse(image, self.rate.scale)
        encoded = analysis.encode(self.rate)
        note = self._unreachable(src, analysis, encoded)
        if note:
            print(f"note: {src}: {note}", file=sys.stderr)
        if not self.warned:
            psnr = domain.full_length_psnr(self.tok, analysis.tiles, analysis.ids)
            note = domain.far_outside_note(src, psnr, self.tok.num_latent_tokens, self.trained_on)
            if note:
                print(f"note: {note}", file=sys.stderr)
                self.warned = True
        return encoded


    def _unreachable(self, src: Path, analysis, encoded) -> str | None:
        """What the rate flags asked that this image cannot give, or None."""
        rate, L, tile = self.rate, self.tok.num_latent_tokens, self.tok.image_size
        if not encoded.reached:
            return (f"--bpp {rate.bpp:g} is below the smallest file at this scale (1 token per tile); try --scale < "
                    f"{rate.scale:g}")
        got = analysis.size_bits(encoded.counts) / (analysis.width * analysis.height) if rate.bpp else 0.0
        if rate.bpp is not None and got < rate.bpp / 2:
            return (f"--bpp {rate.bpp:g} is more than this image can use at this scale: its file has {got:.3g} bits "
                    "per pixel (more tokens would not lower its error)")
        if rate.psnr is not None and (encoded.counts == L).all():
            return f"--psnr {rate.psnr:g}: every tile needs all {L} tokens (some may stay below {rate.psnr:g} dB)"
        if rate.scale < 1 and max(analysis.coded) < tile:
            w, h = analysis.coded
            return (f"--scale {rate.scale:g} shrinks it to {w}x{h} px, less than one {tile} px tile: the whole image "
                    "is coded as one tile")
        return None


def cmd_compress(args: argparse.Namespace) -> int:
    check_rate_flags(args)
    check_threads(args)
    out, ignored = Path(args.out), []
    items = collect(args.inputs, ignored=ignored)
    single = single_input(args.inputs) and not args.batch
    protect = Inputs([*args.inputs, args.tokenizer, args.prior], file_ids(item.src for item in items))
    check_place(out, protect)
    if args.batch:
        if out.suffix.lower() != ".otok":
            raise UserError(f"{out}: --batch writes one .otok file: name the output *.otok")
        targets = [out]
    elif output_kind(out, ".otok", single, "compress") == "file":
        targets = [out]
    else:
        targets = [out / name for name in unique_targets(items, ".otok")]
    done_before = 0
    if args.resume and not (single or args.batch):
        todo = [(item, t) for item, t in zip(items, targets) if not t.is_file()]
        done_before = len(items) - len(todo)
        items, targets = [item for item, _ in todo], [t for _, t in todo]
    check_targets(targets, args.force, protect)
    directory = tokenizer_dir(args.tokenizer)
    from onetok.tokenizers import domain

    owner = load_codec(directory, args.prior, entropy=not args.no_entropy)
    use_threads(args.threads)
    encoder = Encoder(owner, rate_control(args, owner.tokenizer.num_latent_tokens), domain.read_trained_on(directory))
    if single or args.batch:
        code = _compress_one_file(args, encoder, items, targets[0], single)
    else:
        code = _compress_folder(args, encoder, list(zip(items, targets)), out, done_before)
    ignored_note(ignored)
    return code


def _coding(encoder: Encoder) -> str:
    return ", ids " + ("entropy-coded" if encoder.owner.prior is not None else "bit-packed")


def _compress_one_file(args, encoder: Encoder, items: list[Item], target: Path, single: bool) -> int:
    from onetok.fileio import atomic_write_bytes
    from onetok.scripts.progress import progress
    from onetok.tokenizers.codec import format as otok

    images, skipped = [], []
    with progress(len(items), "compress", quiet=args.quiet or single) as bar:
        for item in items:
            try:
                images.append(encoder(item.src))
            except UserError as err:
                if single:
                    raise
                skipped.append(image_skip(err))
            bar.update(1)
    code = finish(len(images), skipped, len(items), target, "compressed")
    data = otok.dumps(encoder.owner.file([encoded.image for encoded in images]))
    atomic_write_bytes(target, data, args.force)
    totals = Totals()
    for encoded in images:
        totals = totals.add(encoded, 0)
    totals = totals._replace(bytes=len(data))
    print(totals.summary() + _coding(encoder) + (skipped_text(skipped, 0) if not single else "") + f" -> {target}")
    return code


def _compress_folder(args, encoder: Encoder, work: list[tuple[Item, Path]], out: Path, resumed: int) -> int:
    from onetok.fileio import atomic_write_bytes
    from onetok.scripts.progress import progress
    from onetok.tokenizers.codec import format as otok

    totals, skipped = Totals(), []
    try:
        with progress(len(work), "compress", quiet=args.quiet) as bar:
            for item, target in work:
                try:
                    encoded = encoder(item.src)
                except UserError as err:
                    skipped.append(image_skip(err))
                    bar.update(1)
                    continue
                data = otok.dumps(encoder.owner.file([encoded.image]))
                atomic_write_bytes(target, data, args.force)
                totals = totals.add(encoded, len(data))  # the images themselves are not kept: flat memory
                bar.update(1)
    except KeyboardInterrupt as err:
        raise interrupted(err, resumed + totals.images, resumed + len(work), out) from None
    except OSError as err:
        raise write_failed(err, resumed + totals.images, resumed + len(work), out) from None
    code = finish(totals.images + resumed, skipped, len(work) + resumed, out, "compressed")
    print(totals.summary() + _coding(encoder) + skipped_text(skipped, resumed) + f" -> {out}")
    return code


# --------------------------------------------------------------------------------------------------------------------
# decompress
# --------------------------------------------------------------------------------------------------------------------


def read_otok(path: Path, fp: bytes | None):
    from onetok.tokenizers.codec import format as otok

    try:
        return otok.loads(path.read_bytes(), fp)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except otok.OtokError as err:
        raise UserError(f"{path}: {err}") from None


class Codecs:
    """The codec for each file: the tokenizer given by --tokenizer or found by the file's fingerprint, and, for an
    entropy-coded file, the prior given by --prior or found by its fingerprint (cached)."""

    def __init__(self, tokenizer: str | None, prior: str | None):
        from onetok.tokenizers import registry

        self.tokenizer_dir = tokenizer_dir(tokenizer) if tokenizer else None
        self.prior_dir = prior
        self.fp = bytes.fromhex(registry.fingerprint_dir(self.tokenizer_dir)) if self.tokenizer_dir else None
        self.cache: dict[tuple, object] = {}

    def for_file(self, path: Path, f):
        if (f.fingerprint, getattr(f, "prior_fingerprint", None)) not in self.cache:
            self.cache[f.fingerprint, getattr(f, "prior_fingerprint", None)] = self._load(path, f)
        return self.cache[f.fingerprint, getattr(f, "prior_fingerprint", None)]

    def _load(self, path: Path, f):
        """The Codec of file `f`; UnknownModel (a ValueError) when its tokenizer or prior is not found."""
        from onetok.tokenizers.codec.codec import Codec
        from onetok.tokenizers.codec.models import find_models

        found = find_models(path, f.fingerprint, getattr(f, "prior_fingerprint", None), self.tokenizer_dir,
                            self.prior_dir)
        prior = load_prior(found.prior) if found.prior is not None else None
        try:
            return Codec(load_tokenizer(found.tokenizer), prior)
        except ValueError as err:
            raise UserError(f"{path}: {err}") from None


class Plan(NamedTuple):
    src: Path  # the .otok file
    file: object  # its parsed content
    codec: object  # the Codec that decodes it
    targets: list[Path]  # one PNG per image


def _plan(items: list[Item], codecs: Codecs, out: Path, kind: str, strict: bool, skipped: list[Skip]) -> list[Plan]:
    """Validate every file and name every output before anything is written. A bad file is an error when `strict`
    (one input), else skipped."""
    plans = []
    for item in items:
        try:
            f = read_otok(item.src, codecs.fp)
            if kind == "file" and f.num_images != 1:
                raise UserError(f"{out}: {item.src} holds {f.num_images} images: give a folder (-o DIR)")
            owner = codecs.for_file(item.src, f)
        except (UserError, UnknownModel) as err:
            if strict:
                raise
            skipped.append(Skip(str(err), "unknown tokenizer" if isinstance(err, UnknownModel) else "unreadable"))
            continue
        targets = [out] if kind == "file" else png_names(out / item.rel.parent, item.src.stem, f.num_images)
        plans.append(Plan(item.src, f, owner, targets))
    return plans


def cmd_decompress(args: argparse.Namespace) -> int:
    check_threads(args)
    ignored: list[Path] = []
    items = collect(args.inputs, suffix=".otok", ignored=ignored)
    out = Path(args.out)
    single = single_input(args.inputs)
    protect = Inputs([*args.inputs, args.tokenizer, args.prior], file_ids(item.src for item in items))
    check_place(out, protect)
    kind = output_kind(out, ".png", single, "decompress")
    if kind == "file":
        check_writable(out, args.force, protect)
    codecs = Codecs(args.tokenizer, args.prior)
    skipped: list[Skip] = []
    plans = _plan(items, codecs, out, kind, single, skipped)
    resumed = 0
    if args.resume and kind == "folder":
        todo = [p for p in plans if not all(t.is_file() for t in p.targets)]
        resumed, plans = len(plans) - len(todo), todo
    check_targets([t for p in plans for t in p.targets], args.force, protect)
    finished: list[Path] = []  # files decoded, for the messages below
    if plans:  # a tokenizer is loaded (so is torch)
        use_threads(args.threads)
    try:
        written = _decode_all(args, plans, single, finished, skipped)
    except KeyboardInterrupt as err:
        if single:
            raise
        raise interrupted(err, resumed + len(finished), resumed + len(plans), out) from None
    except OSError as err:
        if single:
            raise
        raise write_failed(err, resumed + len(finished), resumed + len(plans), out) from None
    code = finish(len(finished) + resumed, skipped, len(items), out, "decompressed")
    where = plans[0].targets[0] if written == 1 else out
    print(f"decompressed {len(finished)} file(s) into {written} PNG image(s)" + skipped_text(skipped, resumed)
          + f" -> {where}")
    ignored_note(ignored)
    return code


def _decode_all(args, plans: list[Plan], single: bool, finished: list[Path], skipped: list[Skip]) -> int:
    """Decode and write every planned file; one that does not decode is an error naming it when `single`, else
    skipped (and listed at the end) while the others go on."""
    from onetok.scripts.progress import progress

    written = 0
    with progress(sum(p.file.num_images for p in plans), "decompress", quiet=args.quiet or single) as bar:
        for plan in plans:
            try:
                images = plan.codec.decode(plan.file)
            except (ValueError, RuntimeError, IndexError) as err:  # OtokError, or a payload the decoder rejects
                message = f"{plan.src}: cannot decode ({' '.join(str(err).split()) or type(err).__name__})"
                if single:
                    raise UserError(message) from None
                skipped.append(Skip(message, "undecodable"))
                bar.update(plan.file.num_images)
                continue
            for image, target in zip(images, plan.targets):
                with atomic_output(target, args.force) as tmp:
                    image.save(tmp, format="PNG", pnginfo=png_info())
                written += 1
                bar.update(1)
            finished.append(plan.src)
    return written


# --------------------------------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------------------------------


def _resume_or_force(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help=f"replace existing {what} (never an input)")
    group.add_argument("--resume", action="store_true",
                       help="folder mode: keep the outputs that already exist (an interrupted run's) and do the rest")


def _entropy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", metavar="DIR",
                   help="the entropy coder's prior (default: the prior/ folder beside the tokenizer, if any)")
    p.add_argument("--no-entropy", action="store_true",
                   help="bit-pack the ids at ceil(log2 K) bits instead of range-coding them with the prior")


def register(sub: argparse._SubParsersAction) -> None:
    from onetok.scripts import cmd_rd

    _register_compress(sub)
    _register_decompress(sub)
    cmd_rd.register(sub)  # eval-compression


def _register_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="images -> .otok files (tokenizer ids, native resolution, tiled)",
                       description="Code images at their own resolution as tiles of tokenizer ids. One image -> "
                                   "OUT.otok (or OUT/NAME.otok); several images or folders -> a folder OUT mirroring "
                                   "their names; --batch -> one OUT.otok holding them all.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively; "
                                                              ".txt/.json sidecars are ignored)")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="a NAME.otok file (one input, or --batch) or a folder (several inputs, or a folder)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the built-in photo tokenizer)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--tokens", type=int, metavar="K",
                      help="the same K tokens for every tile, 1..L, where L is the tokenizer's number of tokens per "
                           "tile (its num_latent_tokens, e.g. 32 for the photo tokenizer; default L)")
    rate.add_argument("--bpp", type=finite_float, metavar="B",
                      help="target size in bits per pixel, the whole file counted; tokens go where they pay most")
    rate.add_argument("--psnr", type=finite_float, metavar="DB", help="per tile, the fewest tokens that reach DB dB")
    p.add_argument("--scale", type=finite_float, default=defaults.SCALE, metavar="S",
                   help="downscale by S in (0, 1] before coding (resized back on decode; default %(default)g)")
    _entropy_flags(p)
    p.add_argument("--batch", action="store_true", help="write all inputs into the one .otok file OUT")
    _resume_or_force(p, "outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_arg(p)
    p.set_defaults(func=cmd_compress)


def _register_decompress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompress", help=".otok files -> PNG images at their original size",
                       description="Decode .otok files; the tokenizer is found by each file's fingerprint. A "
                                   "one-image file -> OUT.png (or OUT/NAME.png); several files, a folder or a "
                                   "--batch file -> a folder OUT.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".otok files and/or folders of them")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="a NAME.png file (one single-image input) or a folder")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="the tokenizer the files were made with (default: found by fingerprint)")
    p.add_argument("--prior", metavar="DIR", help="the prior of entropy-coded files (default: found by fingerprint)")
    _resume_or_force(p, "outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_arg(p)
    p.set_defaults(func=cmd_decompress)
