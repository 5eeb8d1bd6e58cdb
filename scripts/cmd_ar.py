"""`onetok tokenize`, `onetok sample` and `onetok caption`: the unified model's commands (`eval-ar`: cmd_eval_ar.py).

    onetok tokenize --tokenizer models/tokenizer --data data/shapes --out data/tokens
    onetok sample --model models/unified --prompt "a large red circle in the center on a black background" -n 4 --out s
    onetok caption --model models/unified a.png b.png

Sampling defaults: a model's own recommended settings, else `onetok.ar_model.generate.DEFAULT_SETTINGS` (built from
the torch-free `onetok.sampling_defaults`, which the help texts format).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from onetok.fileio import (
    UserError,
    check_replaceable_dir,
    load_error,
    staged_dir,
)
from onetok.sampling_defaults import SJD_WINDOW
from onetok.scripts.arg_types import seed
from onetok.scripts.devices import add_threads_arg, check_threads, choose_device, use_threads
from onetok.scripts.sampling_args import (
    add_sampling_args,
    check_image_tokens,
    check_prompts,
    check_sampling_flags,
    sampling_settings,
)

# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------

MAX_IMAGES = 100_000  # images per `sample` run (-n x prompts): a sane bound; split larger runs
BUILTIN_MODEL = Path(__file__).resolve().parents[1] / "ar_model" / "pretrained" / "cifar10"  # `--model` left out


def model_arg(path: str | None) -> str:
    """--model DIR, or the built-in natural-image model (ar_model/pretrained/cifar10) when it is left out."""
    if path is not None:
        return path
    if not (BUILTIN_MODEL / "config.json").is_file():
        raise UserError("no built-in model in this install (ar_model/pretrained/cifar10; `make cifar-model` "
                        "makes it): give --model DIR")
    return str(BUILTIN_MODEL)


def check_model_dir(path: str) -> Path:
    """A unified model folder, checked before torch is imported."""
    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"{path}: no such model directory")
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer/config.json") if not (directory / n).is_file()]
    if missing:
        raise UserError(f"{path}: not a unified model directory (no {missing[0]})")
    return directory


def _load_model(path: str, threads: int | None = None):
    """The unified model in `path` (on the CPU, whose torch threads are set: see `onetok.scripts.devices`)."""
    directory = check_model_dir(path)
    from onetok.scripts.cli import import_torch

    import_torch()
    use_threads(threads)
    from safetensors import SafetensorError

    from onetok.ar_model.unified import UnifiedModel

    try:
        return UnifiedModel.from_pretrained(directory)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
        raise load_error(path, "model", err) from None


# --------------------------------------------------------------------------------------------------------------------
# tokenize
# --------------------------------------------------------------------------------------------------------------------


def _expected_count(data: str) -> int | None:
    """Sample count from a shapes dataset.json (for the progress bar), else None."""
    path = Path(data) / "dataset.json"
    try:
        summary = json.loads(path.read_text())
        return int(summary["train"]) + int(summary["val"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_tokenize(args: argparse.Namespace) -> int:
    if not (Path(args.tokenizer) / "config.json").is_file():
        raise UserError(f"{args.tokenizer}: not a tokenizer directory (no config.json)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.shard_size < 1:
        raise UserError(f"--shard-size {args.shard_size}: must be at least 1")
    if not Path(args.data).exists() and not any(c in args.data for c in "*?[{"):
        raise UserError(f"{args.data}: no such file or folder")
    from onetok.ar_model.tokenize import image_splits, tokenize_dataset
    from onetok.scripts.progress import progress

    try:
        splits = image_splits(args.data)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    out = Path(args.out)
    start = time.time()
    with staged_dir(out, args.force, inputs=[args.data, args.tokenizer]) as tmp:
        total = _expected_count(args.data) if len(splits) == 2 else None
        with progress(total, "tokenize", quiet=args.quiet) as bar:
            summary = tokenize_dataset(args.tokenizer, args.data, tmp, args.batch_size, args.shard_size, bar.update,
                                       device=choose_device(args.device), flip=args.flip)
        if sum(summary.counts.values()) == 0:
            raise UserError(f"{args.data}: no readable images")
    meta = summary.meta
    counts = ", ".join(f"{n} {split}" for split, n in summary.counts.items())
    words = "too many caption words for text=words" if meta["words"] is None else f"{len(meta['words'])} caption words"
    print(f"tokenized {counts} images into {out} in {time.time() - start:.1f}s: {meta['num_latent_tokens']} codes "
          f"each (codebook {meta['codebook_size']}), {words}"
          + (f"; skipped {summary.skipped} unreadable sample(s)" if summary.skipped else ""))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------------------------------


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = []
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt: empty (give the text to draw)")
        prompts.append(args.prompt.strip())
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{args.prompts_file}: cannot read ({getattr(err, 'strerror', None) or err})") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not any(line.strip() for line in lines):
            raise UserError(f"{args.prompts_file}: no prompts (one prompt per line)")
    if not prompts:
        raise UserError("give --prompt TEXT or --prompts-file FILE")
    return prompts


def _check_sample_args(args: argparse.Namespace) -> list[str]:
    """Every flag and path of `sample` that needs no model; the prompts."""
    args.model = model_arg(args.model)
    for flag, value in (("-n", args.n), ("--batch-size", args.batch_size), ("--window", args.window)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    check_sampling_flags(args)
    if args.window is not None and not args.sjd:
        raise UserError(f"--window {args.window}: applies to --sjd only (add --sjd, or leave --window out)")
    check_threads(args)
    prompts = _read_prompts(args)
    if args.n * len(prompts) > MAX_IMAGES:
        raise UserError(f"-n {args.n}: {args.n * len(prompts)} images in one run; at most {MAX_IMAGES} "
                        "(split the run, e.g. by --seed)")
    check_model_dir(args.model)
    check_replaceable_dir(args.out, args.force, inputs=[args.model, args.prompts_file])
    return prompts


def cmd_sample(args: argparse.Namespace) -> int:
    prompts = _check_sample_args(args)
    model = _load_model(args.model, args.threads)
    from onetok.ar_model.sample_folder import SampleRun, write_samples
    from onetok.scripts.progress import progress

    settings = sampling_settings(args, model.settings)
    check_image_tokens(model, args.image_tokens)
    prompts = check_prompts(model, prompts, args.image_tokens)
    for prompt in prompts:  # they still draw (subword pieces), but the model never saw these words
        unknown = model.vocab.unknown_words(prompt)
        if unknown:
            print(f"warning: prompt {prompt!r}: {', '.join(unknown)}: not seen in training, drawing anyway",
                  file=sys.stderr)
    run = SampleRun(args.n, args.batch_size, settings, args.image_tokens, args.seed, args.sjd, args.window or SJD_WINDOW)
    with (staged_dir(args.out, args.force, [args.model, args.prompts_file]) as tmp,
          progress(args.n * len(prompts), "sample", quiet=args.quiet) as bar):
        summary = write_samples(model, prompts, run, tmp, bar.update)
    print(f"wrote {summary.written} images for {len(prompts)} prompt(s) to {args.out} ({summary.forward_passes} "
          f"forward passes, {summary.seconds:.2f}s{' with SJD' if args.sjd else ''})")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# caption
# --------------------------------------------------------------------------------------------------------------------


def _caption_inputs(paths: list[str], size: int, strict: bool, skipped: list[str]):
    """(readable paths, (B, 3, S, S) float images in [0, 1] or None), read by the one image loader and resized (short
    side) + centre-cropped; an unreadable image is an error when `strict`, else listed in `skipped`."""
    from onetok.data.images import ImageReadError, load_image
    from onetok.data.pixels import from_hwc
    from onetok.data.shards import resize_center_crop

    readable, arrays = [], []
    for path in paths:
        try:
            loaded = load_image(path)
        except ImageReadError as err:
            if strict:
                raise UserError(str(err)) from None
            skipped.append(str(err))
            continue
        for note in loaded.notes:
            print(f"note: {path}: {note}", file=sys.stderr)
        image = loaded.image if loaded.image.size == (size, size) else resize_center_crop(loaded.image, size)
        readable.append(path)
        arrays.append(image)
    return readable, (from_hwc(arrays) if arrays else None)  # (B, 3, S, S)


def cmd_caption(args: argparse.Namespace) -> int:
    args.model = model_arg(args.model)
    check_model_dir(args.model)
    check_threads(args)
    from onetok.scripts.folder_runs import collect, ignored_note

    ignored: list[Path] = []
    files = [str(item.src) for item in collect(args.images, ignored=ignored)]  # folders: their images
    model = _load_model(args.model, args.threads)
    S, strict, skipped, noted = model.tokenizer.image_size, len(files) == 1 and not ignored, [], False
    for start in range(0, len(files), CAPTION_BATCH):  # read, caption and print a batch at a time
        paths, images = _caption_inputs(files[start : start + CAPTION_BATCH], S, strict, skipped)
        if images is None:
            continue
        noted = noted or _far_outside(model, args.model, paths[0], images[:1])
        for path, caption in zip(paths, model.caption(images, greedy=not args.sample, seed=args.seed)):
            print(f"{path}\t{caption}", flush=True)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    ignored_note(ignored)
    if skipped and len(skipped) == len(files):
        raise UserError(f"no image captioned: all {len(skipped)} unreadable; first: {skipped[0]}")
    return 1 if skipped else 0


def _far_outside(model, model_dir: str, path: str, image) -> bool:
    """Note (once per run) that an image lies far outside what the model's tokenizer was trained on, as `compress`
    does: its caption then says what the model knows, not what the picture shows. True when noted."""
    from onetok.data.pixels import to_hwc
    from onetok.tokenizers import domain

    ids = model.tokenizer.encode(image.to(model.device)).cpu().numpy()  # (1, L)
    tiles = to_hwc(image)  # (1, S, S, 3)
    psnr = domain.full_length_psnr(model.tokenizer, tiles, ids)
    if psnr >= domain.FAR_PSNR_DB:
        return False
    trained_on = domain.read_trained_on(Path(model_dir) / "tokenizer") or "other images"
    print(f"note: {path}: the model's tokenizer reproduces it at only {psnr:.1f} dB even with all its tokens: it lies "
          f"far outside what the model was trained on ({trained_on}), so its caption can only name what the model "
          "knows", file=sys.stderr)
    return True


CAPTION_BATCH = 64


# --------------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------------


def _register_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="pre-encode image shards into token shards for AR training",
                       description="Encode image shards with a tokenizer into token shards (OUT/train, OUT/val, "
                                   "OUT/meta.json) for onetok-train's AR configs.")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer directory (onetok export)")
    p.add_argument("--data", required=True, metavar="DATA", help="a dataset root with train/ and val/, or one shard "
                                                                 "spec (a folder, glob or brace pattern of .tar files)")
    p.add_argument("--out", required=True, metavar="DIR", help="the token folder to write")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="images encoded per forward pass "
                                                                            "(default %(default)s)")
    p.add_argument("--shard-size", type=int, default=5000, metavar="N", help="samples per output shard (default %(default)s)")
    p.add_argument("--flip", action="store_true", help="the train split also gets every image mirrored left-right "
                                                       "(KEY_flip): augmentation for the AR model")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ... (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (never the input data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)


def _register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw images from text prompts with a unified model",
                       description="Draw -n images per prompt, in batches of --batch-size, into a new folder OUT: "
                                   "000.png ..., grid.png (the first 64) and samples.jsonl (prompt, seed, settings).")
    p.add_argument("--model", default=None, metavar="DIR", help="a unified model directory (onetok export of an AR "
                                                                "checkpoint; default: the built-in CIFAR-10 model)")
    p.add_argument("--prompt", metavar="TEXT", help="the text prompt (case and punctuation are ignored for word "
                                                    "vocabularies)")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (each gets -n images)")
    p.add_argument("-n", type=int, default=1, metavar="N",
                   help=f"images per prompt (default %(default)s; at most {MAX_IMAGES} images per run in all)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="images drawn together (default %(default)s): memory stays at one batch for any -n")
    add_sampling_args(p)
    p.add_argument("--sjd", action="store_true", help="speculative Jacobi decoding (same distribution, fewer passes)")
    p.add_argument("--window", type=int, default=None, metavar="W", help=f"SJD draft window (default {SJD_WINDOW})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (a new one; written when complete)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (never the model folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_arg(p)
    p.set_defaults(func=cmd_sample)


def _register_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="describe images with a unified model (prints IMAGE<TAB>caption)",
                       description="Caption images: each is read as displayed (EXIF orientation applied), resized "
                                   "(short side) and centre-cropped to the tokenizer's size.")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a unified model directory (default: the built-in CIFAR-10 model)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, GIF, ...) and/or folders "
                                                              "of them (searched recursively)")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1 instead of greedy decoding")
    p.add_argument("--seed", type=seed, default=0, help="random seed for --sample (default %(default)s)")
    add_threads_arg(p)
    p.set_defaults(func=cmd_caption)


def register(sub: argparse._SubParsersAction) -> None:
    for add in (_register_tokenize, _register_sample, _register_caption):
        add(sub)
