"""`onetok eval-tokenizer --tokenizer DIR --data IMAGES [--fid] [--json OUT]`: reconstruction quality of a tokenizer.

Prints PSNR and SSIM at 1, 2, 4, ..., L tokens over the images (shards or a folder of image files), LPIPS when its
backbone weights are on this machine, rFID and Inception Score with `--fid`, and the codebook health at full length
(`onetok.tokenizers.reconstruction`). The JSON report also records the protocol behind every number
(docs/evaluation.md). The FID flags here are shared with `onetok eval-ar --fid`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onetok.fileio import UserError, atomic_write_json, check_writable
from onetok.scripts.devices import choose_device


def add_fid_args(p: argparse.ArgumentParser, ref_help: str) -> None:
    p.add_argument("--fid", action="store_true", help="also measure FID and Inception Score (needs the FID Inception)")
    p.add_argument("--fid-weights", metavar="FILE", help="the FID Inception weights file "
                   "(weights-inception-2015-12-05-6726825d.pth; default: the torch hub cache)")
    p.add_argument("--fid-precision", choices=("float64", "float32"), default="float64",
                   help="arithmetic inside the Inception (default %(default)s, as TiTok's evaluator)")
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


def _check_args(args: argparse.Namespace) -> list:
    """Every flag and path checked before torch loads; the command's inputs (never overwritten)."""
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
    return inputs


def _run(args: argparse.Namespace) -> int:
    inputs = _check_args(args)
    from onetok.eval_setup import write_stats
    from onetok.scripts.cmd_codec import load_tokenizer
    from onetok.tokenizers import reconstruction

    device = choose_device(args.device)
    tokenizer = load_tokenizer(args.tokenizer, device)
    options = reconstruction.EvalOptions(
        args.data, args.batch_size, args.limit, device,
        reconstruction.quality_token_counts(args.fid_tokens, tokenizer.num_latent_tokens), args.fid, args.fid_weights,
        args.fid_precision, args.fid_ref, args.lpips_net, args.lpips_weights)
    report = reconstruction.evaluate_tokenizer(tokenizer, options)
    print(reconstruction.format_table(report.result))
    if report.lpips_note and args.lpips_net != "none":
        print(report.lpips_note, file=sys.stderr)
    if args.fid_stats_out:
        write_stats(args.fid_stats_out, report.real_stats, args.force, inputs)
    if args.json:
        atomic_write_json(args.json, report.result, args.force, inputs)
    return _skipped_summary(args.data, report.skipped)


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
    p.add_argument("--batch-size", type=int, default=250, metavar="B", help="images per forward pass (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate at most N images (default: all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_fid_args(p, "FID statistics (.npz, from --fid-stats-out) of exactly these originals, to skip their features")
    p.add_argument("--fid-tokens", metavar="K,K|all", help="token counts to measure rFID, IS and LPIPS at "
                                                          "(default: L only; all = 1, 2, 4, ..., L)")
    p.add_argument("--lpips-weights", metavar="FILE", help="the torchvision backbone for LPIPS (default: the torch "
                                                           "hub cache; skipped with a note when absent)")
    p.add_argument("--lpips-net", choices=("alex", "vgg", "none"), default="alex", help="LPIPS backbone (default %(default)s)")
    p.set_defaults(func=_run)
