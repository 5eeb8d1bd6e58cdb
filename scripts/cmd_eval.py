"""`onetok eval-tokenizer --tokenizer DIR --data IMAGES [--fid] [--json OUT]`: reconstruction quality of a tokenizer.

Prints PSNR and SSIM at 1, 2, 4, ..., L tokens over the images (shards or a folder of image files), LPIPS when its
backbone weights are on this machine, rFID and Inception Score with `--fid`, and the codebook health at full length:
usage, perplexity, dead codes and the per-position entropy of the ids. The JSON report also records the protocol
behind every number (docs/evaluation.md). The FID helpers here are shared with `onetok eval-ar --fid`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import WRITTEN_BY, UserError, atomic_output, atomic_write_json, check_writable
from onetok.scripts.devices import choose_device

# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def _folder_images(folder: Path, size: int, skipped: list[str]):
    """uint8 (3, S, S) tensors of the image files under `folder` (images by name or content, sorted); an unreadable
    one is added to `skipped` (one line naming it and why), as `onetok data images` does."""
    import numpy as np
    import torch

    from onetok.data.convert import list_inputs, load_image

    candidates, _ = list_inputs(folder)
    for path in candidates:
        try:
            image = load_image(path, size)
        except ValueError as err:  # ImageReadError: not an image, a corrupt one or a bomb
            skipped.append(str(err))
            continue
        yield torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)


def _shard_images(spec: str, size: int):
    import numpy as np
    import torch

    from onetok.data.shards import iter_samples

    for sample in iter_samples(spec, size=size):
        yield torch.from_numpy(np.array(sample["image"], dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)


def image_batches(spec: str, size: int, batch_size: int, limit: int | None, skipped: list[str] | None = None):
    """(B, 3, S, S) float batches in [0, 1] from image shards (directory, glob or brace pattern) or a folder of
    image files (its unreadable files are added to `skipped`); images are resized (short side) and centre-cropped
    to S."""
    import torch

    from onetok.data.shards import expand_shards

    shards = expand_shards(spec)
    if Path(spec).is_dir() and not shards:
        images = _folder_images(Path(spec), size, [] if skipped is None else skipped)
    elif shards and all(Path(p).is_file() for p in shards):
        images = _shard_images(spec, size)
    else:
        raise UserError(f"{spec}: no readable shards or image folder")
    batch = []
    for seen, image in enumerate(images, start=1):
        batch.append(image)
        if len(batch) == batch_size or seen == limit:
            yield torch.stack(batch).float().div_(255)
            batch = []
        if seen == limit:
            return
    if batch:
        yield torch.stack(batch).float().div_(255)


# --------------------------------------------------------------------------------------------------------------------
# FID and LPIPS set-up (shared with eval-ar)
# --------------------------------------------------------------------------------------------------------------------


def add_fid_args(p: argparse.ArgumentParser, ref_help: str) -> None:
    p.add_argument("--fid", action="store_true", help="also measure FID and Inception Score (needs the FID Inception)")
    p.add_argument("--fid-weights", metavar="FILE", help="the FID Inception weights file "
                   "(weights-inception-2015-12-05-6726825d.pth; default: the torch hub cache)")
    p.add_argument("--fid-precision", choices=("float64", "float32"), default="float64",
                   help="arithmetic inside the Inception (default float64, as TiTok's evaluator)")
    p.add_argument("--fid-ref", metavar="REF", help=ref_help)
    p.add_argument("--fid-stats-out", metavar="NPZ", help="save the reference set's FID statistics here for reuse")


def check_fid_args(args: argparse.Namespace, inputs=()) -> None:
    """Refuse inconsistent FID flags, and a --fid-stats-out that is an input or --json, before any work starts."""
    if not args.fid and (args.fid_ref or args.fid_stats_out or args.fid_weights):
        raise UserError("--fid-ref, --fid-stats-out and --fid-weights need --fid")
    if args.fid_stats_out:
        if args.json and Path(args.json).absolute() == Path(args.fid_stats_out).absolute():
            raise UserError(f"--fid-stats-out {args.fid_stats_out}: the same file as --json")
        check_writable(args.fid_stats_out, args.force, inputs)
        if args.fid_ref and str(args.fid_ref).endswith(".npz"):
            raise UserError("--fid-stats-out: --fid-ref is already a statistics file")


def fid_extractor(args: argparse.Namespace, device: str):
    """The FID Inception on `device`, or a one-line UserError naming the missing or bad weights file."""
    from onetok import metrics

    try:
        return metrics.load_fid_extractor(args.fid_weights, args.fid_precision).to(device)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None


def reference_stats(path: str, extractor) -> tuple:
    """(FIDStats, notes) from an .npz, refused when it was made with another feature extractor."""
    from onetok import metrics

    try:
        stats = metrics.load_stats(path)
    except ValueError as err:
        raise UserError(str(err)) from None
    mine, theirs = metrics.extractor_protocol(extractor), stats.protocol
    notes = []
    if "weights_sha256" not in theirs and "extractor" not in theirs:
        notes.append(f"{Path(path).name} has no protocol record (a pytorch-fid or ADM file?): assumed to hold FID "
                     "Inception pool3 statistics of uint8 images")
    elif theirs.get("weights_sha256") != mine.get("weights_sha256") or theirs.get("extractor") != mine.get("extractor"):
        raise UserError(f"{path}: statistics made with another feature extractor ({theirs.get('extractor')}, "
                        f"sha256 {str(theirs.get('weights_sha256'))[:12]}); FIDs across extractors mean nothing")
    return stats, notes


def write_stats(path: str, stats, force: bool, inputs=()) -> None:
    """FID statistics as an .npz whose protocol says onetok wrote it (so --force may replace it later)."""
    from onetok import metrics

    stats = stats._replace(protocol={**stats.protocol, "written_by": WRITTEN_BY})
    with atomic_output(path, force, inputs) as tmp, open(tmp, "wb") as f:
        metrics.save_stats(f, stats)


def lpips_network(args: argparse.Namespace, device: str, image_size: int):
    """(LPIPS network or None, note): skipped with a note when its weights are not on this machine."""
    import torch

    from onetok import metrics

    if args.lpips_net == "none":
        return None, "LPIPS off (--lpips-net none)"
    try:
        net = metrics.load_lpips(args.lpips_weights, args.lpips_net).to(device)
    except FileNotFoundError as err:
        if args.lpips_weights:  # named explicitly: a user error
            raise UserError(str(err)) from None
        return None, f"LPIPS skipped ({err})"
    except ValueError as err:
        raise UserError(str(err)) from None
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    try:
        metrics.lpips_distance(net, probe, probe)
    except RuntimeError:
        return None, f"LPIPS skipped: {image_size} px images are too small for the {args.lpips_net} backbone"
    return net, None


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def fid_token_counts(spec: str | None, L: int) -> list[int]:
    """`--fid-tokens`: None -> [L]; "all" -> 1, 2, 4, ..., L; else a comma list within 1..L."""
    from onetok.tokenizers.codebook_stats import token_counts

    if spec is None:
        return [L]
    if spec == "all":
        return token_counts(L)
    try:
        ks = sorted({int(k) for k in spec.split(",")})
    except ValueError:
        raise UserError(f"--fid-tokens {spec!r}: give 'all' or comma-separated token counts") from None
    if not all(1 <= k <= L for k in ks):
        raise UserError(f"--fid-tokens {spec!r}: token counts must be in 1..{L}")
    return ks


class FidPlan(NamedTuple):
    """What `evaluate` feeds to FID: the extractor, one meter per token count, and whether the originals are the
    real set (False when their statistics come from --fid-ref)."""

    extractor: object
    meters: dict
    real_from_images: bool = True


def evaluate(tokenizer, batches, device: str = "cpu", fid: FidPlan | None = None, lpips_net=None,
             quality_ks: list[int] | None = None) -> dict:
    """PSNR and SSIM per token count (1, 2, 4, ..., L), codebook health at full length, and LPIPS at `quality_ks`
    (default L) with `lpips_net`. With `fid`, its meters (one per token count) get the features; the caller
    computes FID."""
    import torch

    from onetok import metrics
    from onetok.metrics import psnr
    from onetok.tokenizers.codebook_stats import codebook_health, position_code_counts, token_counts

    L, K = tokenizer.num_latent_tokens, tokenizer.codebook_size
    quality_ks = quality_ks or [L]
    ks = sorted(set(token_counts(L)) | set(quality_ks))
    sums = {name: {k: 0.0 for k in ks} for name in ("psnr", "ssim", "lpips")}
    position_counts = torch.zeros(L, K, dtype=torch.long)
    n = 0
    for images in batches:
        images = images.to(device)
        ids = tokenizer.encode(images)  # (B, L)
        position_counts += position_code_counts(ids.cpu(), K)
        if fid is not None and fid.real_from_images:
            real = metrics.extract(fid.extractor, images)
            for meter in fid.meters.values():
                meter.update(real, real=True)
        for k in ks:
            rec = tokenizer.decode(ids[:, :k])
            sums["psnr"][k] += float(psnr(rec, images).sum())
            sums["ssim"][k] += float(metrics.ssim(rec, images).sum())
            if lpips_net is not None and k in quality_ks:
                sums["lpips"][k] += float(metrics.lpips_distance(lpips_net, rec, images).sum())
            if fid is not None and k in fid.meters:
                fid.meters[k].update(metrics.extract(fid.extractor, rec), real=False)
        n += images.shape[0]
    if n == 0:
        raise UserError("no images to evaluate")  # the caller names the files it skipped
    health = codebook_health(position_counts)
    result = {
        "images": n, "num_latent_tokens": L, "codebook_size": K,
        "psnr": {str(k): sums["psnr"][k] / n for k in ks}, "ssim": {str(k): sums["ssim"][k] / n for k in ks},
        "codebook_usage": health.usage, "perplexity": health.perplexity,
        "codebook": {"quantizer": tokenizer.config.quantizer, **health.as_dict(ks)},
    }
    if lpips_net is not None:
        result["lpips"] = {str(k): sums["lpips"][k] / n for k in quality_ks}
    return result


def fid_numbers(meters: dict) -> dict:
    """{"fid": {k: ...}, "inception_score": {k: {"mean", "std"}}} from filled meters (IS only with logits)."""
    try:
        results = {k: meter.compute() for k, meter in meters.items()}
    except ValueError as err:
        raise UserError(str(err)) from None
    out = {"fid": {str(k): r.fid for k, r in results.items()}}
    if all(r.inception_score is not None for r in results.values()):
        out["inception_score"] = {str(k): {"mean": r.inception_score, "std": r.inception_score_std}
                                  for k, r in results.items()}
    return out


def format_table(result: dict) -> str:
    columns = [("PSNR dB", "psnr", "{:8.2f}"), ("SSIM", "ssim", "{:8.4f}"), ("LPIPS", "lpips", "{:8.4f}"),
               ("rFID", "fid", "{:8.2f}")]
    columns = [c for c in columns if c[1] in result]
    lines = [f"{'tokens':>6}" + "".join(f"  {title:>8}" for title, _, _ in columns)]
    for k in result["psnr"]:
        cells = [fmt.format(result[key][k]) if k in result[key] else f"{'-':>8}" for _, key, fmt in columns]
        lines.append(f"{k:>6}" + "".join(f"  {c}" for c in cells))
    c = result["codebook"]
    lines.append(f"images {result['images']}; codebook ({c['quantizer']}, {c['codebook_size']} codes): usage "
                 f"{100 * c['usage']:.1f}%, perplexity {c['perplexity']:.1f}, {c['dead_codes']} dead; per-position "
                 f"entropy {c['entropy_bits_per_token']:.2f} of {c['fixed_bits_per_token']:.2f} bits per token")
    for k, score in result.get("inception_score", {}).items():
        spread = "" if score["std"] is None else f" +- {score['std']:.2f}"
        lines.append(f"Inception Score of the reconstructions at {k} tokens: {score['mean']:.2f}{spread}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------------


def _fid_plan(args: argparse.Namespace, ks: list[int], device: str) -> tuple[FidPlan | None, object, list[str]]:
    """(plan, reference statistics or None, notes) for --fid at token counts `ks`."""
    from onetok import metrics

    if not args.fid:
        return None, None, []
    extractor = fid_extractor(args, device)
    reference, notes = reference_stats(args.fid_ref, extractor) if args.fid_ref else (None, [])
    meters = {k: metrics.FrechetMeter() for k in ks}
    if reference is not None:
        for meter in meters.values():
            try:
                meter.set_reference(reference)
            except ValueError as err:
                raise UserError(f"{args.fid_ref}: {err}") from None
    return FidPlan(extractor, meters, reference is None), reference, notes


def _protocol(args: argparse.Namespace, result: dict, plan: FidPlan | None, reference, fid_notes: list[str],
              lpips_net, lpips_note: str | None) -> dict:
    from onetok import metrics

    protocol = {"images": f"{result['images']} images from {args.data}", "preprocessing": metrics.PREPROCESSING,
                "psnr_ssim": "float reconstructions vs originals in [0, 1]; SSIM: Wang et al. 2004, Gaussian 11 / "
                             "1.5, valid window positions (torchmetrics)",
                "codebook": "plug-in estimates from the ids at full length over these images; per-position entropies "
                            "are biased low when the image count is not much larger than the codebook"}
    if plan is not None:
        n_real = reference.n if reference is not None else result["images"]
        source = f"the originals ({'statistics from ' + args.fid_ref if reference is not None else args.data})"
        fid = metrics.fid_protocol(plan.extractor, "rFID", result["image_size"], n_real, result["images"], source)
        differences = metrics.rfid_differences(fid)
        fid.update(paper_protocol=metrics.RFID_PAPER_PROTOCOL, not_comparable_because=differences, notes=fid_notes)
        if not differences:
            fid["notes"].append("every setting onetok can check matches the paper protocol; the images themselves "
                                "must be ImageNet-1k val, resized as the paper did")
        protocol["fid"] = fid
    if lpips_net is not None:
        protocol["lpips"] = getattr(lpips_net, "protocol", {"network": type(lpips_net).__name__})
    else:
        protocol["lpips"] = {"skipped": lpips_note}
    return protocol


def _run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if not Path(args.data).exists() and not any(c in args.data for c in "*?[{"):
        raise UserError(f"{args.data}: no such file or folder")
    if not (Path(args.tokenizer) / "config.json").is_file() or not (Path(args.tokenizer) / "model.safetensors").is_file():
        raise UserError(f"{args.tokenizer}: not a tokenizer directory (needs config.json and model.safetensors)")
    inputs = [args.tokenizer, args.data, args.fid_ref, args.fid_weights, args.lpips_weights]
    if args.json:
        check_writable(args.json, args.force, inputs)
    check_fid_args(args, inputs)
    from onetok.scripts.cmd_codec import load_tokenizer

    device = choose_device(args.device)
    tokenizer = load_tokenizer(args.tokenizer, device)
    quality_ks = fid_token_counts(args.fid_tokens, tokenizer.num_latent_tokens)
    plan, reference, notes = _fid_plan(args, quality_ks, device)
    lpips_net, lpips_note = lpips_network(args, device, tokenizer.image_size)
    start, skipped = time.time(), []
    batches = image_batches(args.data, tokenizer.image_size, args.batch_size, args.limit, skipped)
    result = _evaluate_or_say_why(args.data, skipped,
                                  lambda: evaluate(tokenizer, batches, device, plan, lpips_net, quality_ks))
    result["image_size"] = tokenizer.image_size
    if plan is not None:
        if reference is not None and reference.n and reference.n != result["images"]:
            raise UserError(f"--fid-ref holds statistics of {reference.n} images, this run reconstructs "
                            f"{result['images']}: rFID compares a set with its own reconstructions")
        result.update(fid_numbers(plan.meters))
    result["protocol"] = _protocol(args, result, plan, reference, notes, lpips_net, lpips_note)
    result["seconds"] = round(time.time() - start, 2)
    print(format_table(result))
    if lpips_net is None and args.lpips_net != "none":
        print(lpips_note, file=sys.stderr)
    if plan is not None and args.fid_stats_out:
        write_stats(args.fid_stats_out, next(iter(plan.meters.values())).real_stats(result["protocol"]["fid"]),
                    args.force, inputs)
    if args.json:
        atomic_write_json(args.json, result, args.force, inputs)
    return _skipped_summary(args.data, skipped)


def _evaluate_or_say_why(data: str, skipped: list[str], run):
    """`run` (a zero-argument call) -> its result; "no images" names the data and the files skipped in it."""
    try:
        return run()
    except UserError as err:
        if "no images" not in str(err):
            raise
        if skipped:
            raise UserError(f"{data}: no images to evaluate: all {len(skipped)} image file(s) unreadable; first: "
                            f"{skipped[0]}") from None
        raise UserError(f"{data}: no images to evaluate (no readable image in it)") from None


def _skipped_summary(data: str, skipped: list[str]) -> int:
    """The files of a folder that were skipped, one line each at the end, and exit code 1 when there are any; the
    other files (not images by name or content) in one note."""
    from onetok.data.convert import not_images
    from onetok.data.shards import expand_shards
    from onetok.scripts.folder_runs import ignored_note

    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} unreadable image file(s) skipped in {data}", file=sys.stderr)
    if Path(data).is_dir() and not expand_shards(data):  # a folder of image files
        ignored_note(not_images(Path(data)))
    return 1 if skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-tokenizer", help="PSNR/SSIM per token count, LPIPS, rFID, codebook health",
                       description="Reconstruction quality of a tokenizer at 1, 2, 4, ..., L tokens over images "
                                   "resized (short side) and centre-cropped to its size; codebook health at L.")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer directory (onetok export)")
    p.add_argument("--data", required=True, metavar="DATA", help="image shards (a directory, glob or brace pattern) "
                                                                 "or a folder of image files")
    p.add_argument("--json", metavar="FILE", help="also write the numbers and their protocol to this JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --json / --fid-stats-out file")
    p.add_argument("--batch-size", type=int, default=250, metavar="B", help="images per forward pass (default 250)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate at most N images (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_fid_args(p, "FID statistics (.npz, from --fid-stats-out) of exactly these originals, to skip their features")
    p.add_argument("--fid-tokens", metavar="K,K|all", help="token counts to measure rFID, IS and LPIPS at "
                                                          "(default: L only; all = 1, 2, 4, ..., L)")
    p.add_argument("--lpips-weights", metavar="FILE", help="the torchvision backbone for LPIPS (default: the torch "
                                                           "hub cache; skipped with a note when absent)")
    p.add_argument("--lpips-net", choices=("alex", "vgg", "none"), default="alex", help="LPIPS backbone (default alex)")
    p.set_defaults(func=_run)
