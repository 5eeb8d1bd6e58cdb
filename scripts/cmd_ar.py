"""`onetok tokenize`, `onetok sample`, `onetok caption` and `onetok eval-ar`: the unified model's commands.

    onetok tokenize --tokenizer models/tokenizer --data data/shapes --out data/tokens
    onetok sample --model models/unified --prompt "a large red circle in the center on a black background" -n 4 --out s
    onetok caption --model models/unified a.png b.png
    onetok eval-ar --model models/unified --data data/shapes/val --n 300 --json ar_metrics.json [--fid]

Sampling defaults (cfg 2, temperature 0.7, no top-k/top-p) are those of the shapes recipe, stated in
docs/benchmarks.md (`onetok.ar_model.evaluate.DEFAULT_SETTINGS`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from onetok.fileio import UserError, atomic_output, check_writable, replace_dir, staging_dir

# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def _load_model(path: str):
    from onetok.ar_model.unified import UnifiedModel

    if not Path(path).is_dir():
        raise UserError(f"{path}: no such model directory")
    try:
        return UnifiedModel.from_pretrained(path)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: cannot load the model ({str(err).splitlines()[0][:200]})") from None


def _settings(args: argparse.Namespace):
    from onetok.ar_model.evaluate import DEFAULT_SETTINGS
    from onetok.ar_model.generate import SamplingSettings

    d = DEFAULT_SETTINGS
    try:
        return SamplingSettings(
            temperature=d.temperature if args.temperature is None else args.temperature,
            top_k=d.top_k if args.top_k is None else (args.top_k or None),
            top_p=d.top_p if args.top_p is None else args.top_p,
            cfg_scale=d.cfg_scale if args.cfg is None else args.cfg,
        )
    except ValueError as err:
        raise UserError(str(err)) from None


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    # the defaults named here are ar_model.evaluate.DEFAULT_SETTINGS (not imported: the parser must stay torch-free)
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default 2; 1 = off)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely codes (default: all; 0 = all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-tokens", type=int, default=None, metavar="K",
                   help="draw only the first K of the tokenizer's L tokens (coarser images; default L)")


def _check_image_tokens(model, k: int | None) -> None:
    L = model.tokenizer.num_latent_tokens
    if k is not None and not 1 <= k <= L:
        raise UserError(f"--image-tokens {k}: must be in 1..{L}")


def _prompt_words(model, prompts: list[str]) -> None:
    for prompt in prompts:
        try:
            model.vocab.encode_text(prompt)
        except ValueError as err:
            raise UserError(f"prompt {prompt!r}: {err}") from None


# --------------------------------------------------------------------------------------------------------------------
# tokenize
# --------------------------------------------------------------------------------------------------------------------


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device available")
    return name


def _expected_count(data: str) -> int | None:
    """Sample count from a shapes dataset.json (for the progress bar), else None."""
    path = Path(data) / "dataset.json"
    try:
        summary = json.loads(path.read_text())
        return int(summary["train"]) + int(summary["val"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_tokenize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.ar_model.tokenize import image_splits, tokenize_dataset

    if not (Path(args.tokenizer) / "config.json").is_file():
        raise UserError(f"{args.tokenizer}: not a tokenizer directory (no config.json)")
    if args.batch_size < 1 or args.shard_size < 1:
        raise UserError("--batch-size and --shard-size must be >= 1")
    try:
        splits = image_splits(args.data)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    out = Path(args.out)
    tmp = staging_dir(out, args.force)
    start = time.time()
    try:
        total = _expected_count(args.data) if len(splits) == 2 else None
        with tqdm(total=total, desc="tokenize", unit="img", disable=args.quiet) as bar:
            summary = tokenize_dataset(args.tokenizer, args.data, tmp, args.batch_size, args.shard_size, bar.update,
                                       device=_device(args.device))
        if sum(summary.counts.values()) == 0:
            raise UserError(f"{args.data}: no readable images")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
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
    prompts = [args.prompt] if args.prompt else []
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{args.prompts_file}: cannot read ({err})") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError("give --prompt TEXT or --prompts-file FILE (with at least one non-empty line)")
    return prompts


def _save_png(image, path: Path) -> None:
    """float (3, S, S) in [0, 1] -> PNG."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (S, S, 3)
    Image.fromarray(array).save(path)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from torchvision.utils import make_grid

    from onetok.ar_model.sjd import default_chains

    if args.n < 1 or (args.window is not None and args.window < 1) or (args.chains is not None and args.chains < 1):
        raise UserError("-n, --window and --chains must be >= 1")
    prompts = _read_prompts(args)
    model = _load_model(args.model)
    args.chains = args.chains or default_chains(model.device)
    if args.chains > model.tokenizer.codebook_size:
        raise UserError(f"--chains must be <= the codebook size {model.tokenizer.codebook_size}, got {args.chains}")
    settings = _settings(args)
    _check_image_tokens(model, args.image_tokens)
    _prompt_words(model, prompts)
    out = Path(args.out)
    tmp = staging_dir(out, args.force)
    try:
        images, lines = [], []
        for i, prompt in enumerate(prompts):  # one batch per prompt: its n images, seed + i
            seed = args.seed + i
            result = model.generate_images([prompt], args.n, settings, args.image_tokens, seed, sjd=args.sjd,
                                           window=args.window or 16, chains=args.chains)
            for j, image in enumerate(result.images):
                name = f"{len(images):03d}.png"
                _save_png(image, tmp / name)
                images.append(image.cpu())
                lines.append({
                    "file": name, "prompt": prompt, "seed": seed, "index_in_batch": j, "batch_size": args.n,
                    "settings": {"temperature": settings.temperature, "top_k": settings.top_k,
                                 "top_p": settings.top_p, "cfg": settings.cfg_scale,
                                 "image_tokens": args.image_tokens or model.tokenizer.num_latent_tokens,
                                 "sjd": args.sjd, "window": (args.window or 16) if args.sjd else None,
                                 "chains": args.chains if args.sjd else None},
                    "forward_passes": result.forward_passes, "seconds": round(result.seconds, 4),
                })
        grid = make_grid(torch.stack(images), nrow=args.n if len(prompts) > 1 else min(args.n, 8), padding=2)
        _save_png(grid, tmp / "grid.png")
        (tmp / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    passes = sum(line["forward_passes"] for line in lines[:: args.n])
    seconds = sum(line["seconds"] for line in lines[:: args.n])
    print(f"wrote {len(images)} images for {len(prompts)} prompt(s) to {out} ({passes} forward passes, "
          f"{seconds:.2f}s{' with SJD' if args.sjd else ''})")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# caption
# --------------------------------------------------------------------------------------------------------------------


def cmd_caption(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from onetok.data.shards import resize_center_crop

    model = _load_model(args.model)
    S = model.tokenizer.image_size
    arrays = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"{path}: not a readable image ({type(err).__name__})") from None
        if image.size != (S, S):
            image = resize_center_crop(image, S)
        arrays.append(np.asarray(image, dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    captions = []
    for start in range(0, len(images), 64):
        captions += model.caption(images[start : start + 64], greedy=not args.sample, seed=args.seed)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# eval-ar
# --------------------------------------------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _gfid_reference(args: argparse.Namespace, model, extractor, meter) -> tuple[str, list[str]]:
    """Fill `meter`'s real set from --fid-ref (.npz statistics, image shards or a folder of images), else from the
    first --n val images of --data; returns (what the reference is, notes)."""
    from onetok import metrics
    from onetok.ar_model.data import is_token_dir
    from onetok.ar_model.evaluate import val_spec
    from onetok.scripts.cmd_eval import image_batches, reference_stats

    if args.fid_ref and str(args.fid_ref).endswith(".npz"):
        stats, notes = reference_stats(args.fid_ref, extractor)
        try:
            meter.set_reference(stats)
        except ValueError as err:
            raise UserError(f"{args.fid_ref}: {err}") from None
        return f"statistics {args.fid_ref} ({stats.n or 'unknown number of'} images)", notes
    if args.fid_ref is None and is_token_dir(args.data):
        raise UserError(f"{args.data} holds tokens, not images: give --fid-ref (reference images or an .npz)")
    spec, limit = (args.fid_ref, None) if args.fid_ref else (val_spec(args.data), args.n)
    for images in image_batches(spec, model.tokenizer.image_size, args.batch_size, limit):
        meter.update(metrics.extract(extractor, images), real=True)
    what = "all images in" if args.fid_ref else f"the first {args.n} val images of"
    return f"{what} {spec}", []


def _gfid_report(args: argparse.Namespace, model, extractor, meter, reference: str, notes: list[str]) -> dict:
    """{"fid", "inception_score", "protocol"} of the samples fed to `meter`; --fid-stats-out saves the reference."""
    from onetok import metrics
    from onetok.scripts.cmd_eval import write_stats

    try:
        result = meter.compute()
    except ValueError as err:
        raise UserError(str(err)) from None
    protocol = metrics.fid_protocol(extractor, "gFID", model.tokenizer.image_size, result.real_images,
                                    result.fake_images, reference)
    protocol.update(paper_protocol=metrics.GFID_PAPER_PROTOCOL,
                    not_comparable_because=metrics.gfid_differences(protocol), notes=notes)
    if args.fid_stats_out:
        write_stats(args.fid_stats_out, meter.real_stats(protocol), args.force)
    score = None if result.inception_score is None else {"mean": result.inception_score,
                                                         "std": result.inception_score_std}
    return {"fid": result.fid, "inception_score": score, "protocol": protocol}


def cmd_eval_ar(args: argparse.Namespace) -> int:
    from onetok import metrics
    from onetok.ar_model import evaluate
    from onetok.scripts.cmd_eval import check_fid_args, fid_extractor

    if args.n < 1:
        raise UserError("--n must be >= 1")
    if args.json:
        check_writable(args.json, args.force)
    check_fid_args(args)
    model = _load_model(args.model)
    settings = _settings(args)
    _check_image_tokens(model, args.image_tokens)
    try:
        items = evaluate.load_eval_items(args.data, args.n, model, args.model)
    except (OSError, ValueError) as err:
        raise UserError(f"{args.data}: {err}") from None
    _prompt_words(model, items.captions)
    on_images = None
    if args.fid:  # the reference first: a bad --fid-ref fails before any sampling
        extractor = fid_extractor(args, str(model.transformer.output.weight.device))
        meter = metrics.FrechetMeter()
        reference, notes = _gfid_reference(args, model, extractor, meter)

        def on_images(images):
            meter.update(metrics.extract(extractor, images), real=False)
    start = time.time()
    report = evaluate.evaluate(model, items, settings, args.batch_size, args.seed, args.image_tokens, on_images)
    if args.fid:
        report["gfid"] = _gfid_report(args, model, extractor, meter, reference, notes)
    report.update(model=str(args.model), data=str(args.data), seconds=round(time.time() - start, 1))
    t2i, i2t = report["text_to_image"], report["image_to_text"]
    print(f"text -> image  exact {_fmt(t2i['exact'])} on {t2i['n']} prompts  ("
          + ", ".join(f"{k} {_fmt(v)}" for k, v in t2i["per_attribute"].items()) + ")")
    print(f"image -> text  exact {_fmt(i2t['exact'])} on {i2t['n']} images")
    if "gfid" in report:
        g, score = report["gfid"], report["gfid"]["inception_score"]
        print(f"gFID {g['fid']:.2f} ({g['protocol']['fake_images']} samples vs {g['protocol']['reference']})"
              + ("" if score is None else f", Inception Score {score['mean']:.2f}"))
    if "holdout" in t2i:
        print(f"held-out combos: text -> image {_fmt(t2i['holdout']['exact'])} on {t2i['holdout']['n']}, "
              f"image -> text {_fmt(i2t['holdout']['exact'])} on {i2t['holdout']['n']}")
    print(f"settings: cfg {settings.cfg_scale}, temperature {settings.temperature}, top-k {settings.top_k}, "
          f"top-p {settings.top_p}, seed {args.seed}; {report['seconds']}s", file=sys.stderr)
    if args.json:
        with atomic_output(args.json, force=args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    from onetok.scripts.cmd_eval import add_fid_args

    p = sub.add_parser("tokenize", help="pre-encode image shards into token shards for AR training")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (onetok export of a tokenizer)")
    p.add_argument("--data", required=True, help="a dataset root with train/ and val/, or one shard spec")
    p.add_argument("--out", required=True, help="the token folder to write (OUT/train, OUT/val, OUT/meta.json)")
    p.add_argument("--batch-size", type=int, default=256, help="images encoded per forward pass")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per output shard")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("sample", help="draw images from text prompts with a unified model")
    p.add_argument("--model", required=True, help="a unified model directory (onetok export of an AR checkpoint)")
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--prompts-file", help="one prompt per line (each gets -n images)")
    p.add_argument("-n", type=int, default=1, help="images per prompt")
    _add_sampling_args(p)
    p.add_argument("--sjd", action="store_true", help="speculative Jacobi decoding (same distribution, fewer passes)")
    p.add_argument("--window", type=int, default=None, help="SJD draft window (default 16)")
    p.add_argument("--chains", type=int,  # None: ar_model.sjd.default_chains (the parser stays torch-free)
                   help="SJD draft chains per image, verified together as a token tree (default 8 on CUDA, 1 "
                        "elsewhere; 1 = the paper's single chain: more passes, fewer rows per pass)")
    p.add_argument("--out", required=True, help="output folder: 000.png ..., grid.png, samples.jsonl")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("caption", help="describe images with a unified model (prints IMAGE<TAB>caption)")
    p.add_argument("--model", required=True, help="a unified model directory")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1 instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("eval-ar", help="text->image attribute accuracy and caption exact match on shapes val data")
    p.add_argument("--model", required=True, help="a unified model directory")
    p.add_argument("--data", required=True, help="val image shards, a dataset root, or a token folder")
    p.add_argument("--n", type=int, default=300, help="val prompts and val images to judge")
    _add_sampling_args(p)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", help="also write the full report as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --json / --fid-stats-out file")
    add_fid_args(p, "the gFID reference: an .npz of FID statistics (--fid-stats-out), image shards or a folder of "
                    "images (default: the first --n val images of --data)")
    p.set_defaults(func=cmd_eval_ar)
