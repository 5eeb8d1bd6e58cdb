"""A tokenizer's reconstruction quality (`onetok eval-tokenizer`): PSNR and SSIM at 1, 2, 4, ..., L tokens, LPIPS,
rFID and Inception Score at chosen token counts, and the codebook health at full length, with the protocol behind
every number (docs/evaluation.md)."""

from __future__ import annotations

import time
from typing import NamedTuple

from onetok.eval_setup import NoImagesError, fid_extractor, image_batches, lpips_network, no_images, reference_stats
from onetok.eval_setup import set_reference as _set_reference


class EvalOptions(NamedTuple):
    """What `evaluate_tokenizer` measures, on which data, and how."""

    data: str  # image shards (directory, glob or brace pattern) or a folder of image files
    batch_size: int
    limit: int | None = None  # at most this many images
    device: str = "cpu"
    quality_ks: list[int] | None = None  # token counts for LPIPS, rFID and IS (default [L])
    fid: bool = False
    fid_weights: str | None = None
    fid_precision: str = "float64"
    fid_ref: str | None = None  # .npz statistics of exactly these originals
    lpips_net: str = "alex"  # or "vgg", "none"
    lpips_weights: str | None = None


class TokenizerEval(NamedTuple):
    result: dict  # the JSON report (numbers and protocol)
    skipped: list[str]  # unreadable image files of a folder, one line each
    lpips_note: str | None  # why LPIPS was not measured
    real_stats: object | None  # the originals' FID statistics (FIDStats) when measured here, for --fid-stats-out


class FidPlan(NamedTuple):
    """What `evaluate` feeds to FID: the extractor, one meter per token count, and whether the originals are the
    real set (False when their statistics come from a reference file)."""

    extractor: object
    meters: dict
    real_from_images: bool = True


def quality_token_counts(spec: str | None, L: int) -> list[int]:
    """`--fid-tokens`: None -> [L]; "all" -> 1, 2, 4, ..., L; else a comma list within 1..L (ValueError)."""
    from onetok.tokenizers.codebook_stats import token_counts

    if spec is None:
        return [L]
    if spec == "all":
        return token_counts(L)
    try:
        ks = sorted({int(k) for k in spec.split(",")})
    except ValueError:
        raise ValueError(f"--fid-tokens {spec!r}: give 'all' or comma-separated token counts") from None
    if not all(1 <= k <= L for k in ks):
        raise ValueError(f"--fid-tokens {spec!r}: token counts must be in 1..{L}")
    return ks


def evaluate(tokenizer, batches, device: str = "cpu", fid: FidPlan | None = None, lpips_net=None,
             quality_ks: list[int] | None = None) -> dict:
    """PSNR and SSIM per token count (1, 2, 4, ..., L), codebook health at full length, and LPIPS at `quality_ks`
    (default L) with `lpips_net`. With `fid`, its meters (one per token count) get the features; the caller
    computes FID. NoImagesError when `batches` is empty."""
    import torch

    from onetok import metrics
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
            sums["psnr"][k] += float(metrics.psnr(rec, images).sum())
            sums["ssim"][k] += float(metrics.ssim(rec, images).sum())
            if lpips_net is not None and k in quality_ks:
                sums["lpips"][k] += float(metrics.lpips_distance(lpips_net, rec, images).sum())
            if fid is not None and k in fid.meters:
                fid.meters[k].update(metrics.extract(fid.extractor, rec), real=False)
        n += images.shape[0]
    if n == 0:
        raise NoImagesError("no images to evaluate")
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
    results = {k: meter.compute() for k, meter in meters.items()}
    out = {"fid": {str(k): r.fid for k, r in results.items()}}
    if all(r.inception_score is not None for r in results.values()):
        out["inception_score"] = {str(k): {"mean": r.inception_score, "std": r.inception_score_std}
                                  for k, r in results.items()}
    return out


def _fid_plan(options: EvalOptions, ks: list[int]) -> tuple[FidPlan | None, object, list[str]]:
    """(plan, reference statistics or None, notes) for FID at token counts `ks`."""
    from onetok import metrics

    if not options.fid:
        return None, None, []
    extractor = fid_extractor(options.fid_weights, options.fid_precision, options.device)
    reference, notes = reference_stats(options.fid_ref, extractor) if options.fid_ref else (None, [])
    meters = {k: metrics.FrechetMeter() for k in ks}
    if reference is not None:
        for meter in meters.values():
            _set_reference(meter, reference, options.fid_ref)
    return FidPlan(extractor, meters, reference is None), reference, notes


def _fid_protocol(options: EvalOptions, result: dict, plan: FidPlan, reference, notes: list[str]) -> dict:
    from onetok import metrics

    n_real = reference.n if reference is not None else result["images"]
    source = f"the originals ({'statistics from ' + options.fid_ref if reference is not None else options.data})"
    fid = metrics.fid_protocol(plan.extractor, "rFID", result["image_size"], n_real, result["images"], source)
    differences = metrics.rfid_differences(fid)
    fid.update(paper_protocol=metrics.RFID_PAPER_PROTOCOL, not_comparable_because=differences, notes=notes)
    if not differences:
        fid["notes"].append("every setting onetok can check matches the paper protocol; the images themselves "
                            "must be ImageNet-1k val, resized as the paper did")
    return fid


def _protocol(options: EvalOptions, result: dict, lpips_net, lpips_note: str | None) -> dict:
    from onetok import metrics

    return {"images": f"{result['images']} images from {options.data}", "preprocessing": metrics.PREPROCESSING,
            "psnr_ssim": "float reconstructions vs originals in [0, 1]; SSIM: Wang et al. 2004, Gaussian 11 / 1.5, "
                         "valid window positions (torchmetrics)",
            "codebook": "plug-in estimates from the ids at full length over these images; per-position entropies "
                        "are biased low when the image count is not much larger than the codebook",
            "lpips": (getattr(lpips_net, "protocol", {"network": type(lpips_net).__name__}) if lpips_net is not None
                      else {"skipped": lpips_note})}


def evaluate_tokenizer(tokenizer, options: EvalOptions) -> TokenizerEval:
    """The whole evaluation of `tokenizer` on `options.data`: numbers, protocol and the files skipped. Raises
    NoImagesError naming the data (and its unreadable files) when no image could be read."""
    quality_ks = options.quality_ks or [tokenizer.num_latent_tokens]
    plan, reference, notes = _fid_plan(options, quality_ks)
    lpips_net, lpips_note = lpips_network(options.lpips_net, options.lpips_weights, options.device,
                                          tokenizer.image_size)
    start, skipped = time.time(), []
    batches = image_batches(options.data, tokenizer.image_size, options.batch_size, options.limit, skipped)
    try:
        result = evaluate(tokenizer, batches, options.device, plan, lpips_net, quality_ks)
    except NoImagesError:
        raise no_images(options.data, skipped) from None
    result["image_size"] = tokenizer.image_size
    real_stats = None
    if plan is not None:
        if reference is not None and reference.n and reference.n != result["images"]:
            raise ValueError(f"--fid-ref holds statistics of {reference.n} images, this run reconstructs "
                             f"{result['images']}: rFID compares a set with its own reconstructions")
        result.update(fid_numbers(plan.meters))
    result["protocol"] = _protocol(options, result, lpips_net, lpips_note)
    if plan is not None:
        result["protocol"]["fid"] = _fid_protocol(options, result, plan, reference, notes)
        if plan.real_from_images:
            real_stats = next(iter(plan.meters.values())).real_stats(result["protocol"]["fid"])
    result["seconds"] = round(time.time() - start, 2)
    return TokenizerEval(result, skipped, lpips_note, real_stats)


def format_table(result: dict) -> str:
    """The report as a table: one row per token count, then the codebook health and Inception Scores."""
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
