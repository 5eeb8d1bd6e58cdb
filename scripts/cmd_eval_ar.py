"""`onetok eval-ar`: a unified model judged on val data, both directions, with the judge the data call for.

    onetok eval-ar --model models/unified --data data/shapes/val --n 300 --json ar_metrics.json [--fid]
    onetok eval-ar --model DIR --data ../shared/data/cifar10/val --n 5000 --per-class 100 --grids grids/

Shapes data: the pixel parser judges text -> image; captions by exact match. Data whose JSON carries a `label`
known to the judge classifier (`--judge DIR`, default the built-in CIFAR-10 judge): captions by class accuracy,
text -> image by class fidelity, Fréchet distance, precision/recall and diversity in the judge's feature space, for
every `--template` (default "a photo of a {label}" and "{label}"), plus the tokenizer's reconstructions (the
ceiling). Other data: exact match and word F1 of captions; with a judge, feature-space distances of one sample per
val caption. `--fid` adds the standard Inception gFID. docs/evaluation.md has the protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onetok.fileio import UserError, atomic_write_json, check_replaceable_dir, check_writable, staged_dir
from onetok.scripts.devices import add_threads_arg, check_threads
from onetok.scripts.sampling_args import add_sampling_args, check_image_tokens, check_sampling_flags, sampling_settings

# --------------------------------------------------------------------------------------------------------------------
# gFID (the FID Inception)
# --------------------------------------------------------------------------------------------------------------------


def _gfid_reference(args: argparse.Namespace, model, extractor, meter) -> tuple[str, list[str]]:
    """Fill `meter`'s real set from --fid-ref (.npz statistics, image shards or a folder of images), else from the
    first --n val images of --data; returns (what the reference is, notes)."""
    from onetok import metrics
    from onetok.ar_model.data import is_token_dir
    from onetok.ar_model.evaluate import val_spec
    from onetok.eval_setup import image_batches, reference_stats, set_reference

    if args.fid_ref and str(args.fid_ref).endswith(".npz"):
        stats, notes = reference_stats(args.fid_ref, extractor)
        set_reference(meter, stats, args.fid_ref)
        return f"statistics {args.fid_ref} ({stats.n or 'unknown number of'} images)", notes
    if args.fid_ref is None and is_token_dir(args.data):
        raise UserError(f"{args.data} holds tokens, not images: give --fid-ref (reference images or an .npz)")
    spec, limit = (args.fid_ref, None) if args.fid_ref else (val_spec(args.data), args.n)
    for images in image_batches(spec, model.tokenizer.image_size, args.batch_size, limit):
        meter.update(metrics.extract(extractor, images), real=True)
    what = "all images in" if args.fid_ref else f"the first {args.n} val images of"
    return f"{what} {spec}", []


def _gfid_report(args: argparse.Namespace, model, extractor, meter, reference: str, notes: list[str],
                 inputs: list) -> dict:
    """{"fid", "inception_score", "protocol"} of the samples fed to `meter`; --fid-stats-out saves the reference."""
    from onetok import metrics
    from onetok.eval_setup import write_stats

    result = meter.compute()
    protocol = metrics.fid_protocol(extractor, "gFID", model.tokenizer.image_size, result.real_images,
                                    result.fake_images, reference)
    protocol.update(paper_protocol=metrics.GFID_PAPER_PROTOCOL,
                    not_comparable_because=metrics.gfid_differences(protocol), notes=notes)
    if args.fid_stats_out:
        write_stats(args.fid_stats_out, meter.real_stats(protocol), args.force, inputs)
    score = None if result.inception_score is None else {"mean": result.inception_score,
                                                         "std": result.inception_score_std}
    return {"fid": result.fid, "inception_score": score, "protocol": protocol}


# --------------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> list:
    """Every flag checked before torch loads; returns the command's inputs (never overwritten)."""
    from onetok.scripts.cmd_ar import check_model_dir, model_arg
    from onetok.scripts.cmd_eval import check_fid_args

    for flag in ("n", "batch_size", "per_class"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    for template in args.template or []:
        try:
            ok = "{label}" in template and template.format(label="x") != template
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"--template {template!r}: must hold {{label}} and no other braces")
    check_sampling_flags(args)
    check_threads(args)
    if not Path(args.data).exists() and not any(c in args.data for c in "*?[{"):
        raise UserError(f"{args.data}: no such file or folder")
    args.model = model_arg(args.model)
    check_model_dir(args.model)
    if args.judge is not None and not Path(args.judge).is_dir():
        raise UserError(f"--judge {args.judge}: no such classifier folder")
    inputs = [args.model, args.data, args.fid_ref, args.fid_weights, args.judge]
    if args.json:
        check_writable(args.json, args.force, inputs)
    if args.grids:
        check_replaceable_dir(args.grids, args.force, inputs)
    check_fid_args(args, inputs)
    return inputs


def _load_judge(path: str | None):
    """The judge classifier: --judge, else the built-in one when it is installed, else None."""
    from onetok.ar_model.classifier import BUILTIN_JUDGE, ImageClassifier, is_classifier_dir
    from onetok.ar_model.judges import ClassJudge

    if path is None:
        return ClassJudge(ImageClassifier.from_pretrained(BUILTIN_JUDGE)) if is_classifier_dir(BUILTIN_JUDGE) else None
    if not is_classifier_dir(path):
        raise UserError(f"--judge {path}: not a classifier folder (onetok judge train)")
    return ClassJudge(ImageClassifier.from_pretrained(path))


def _save_grids(out: str, grids: dict, per_row: int, force: bool, inputs: list) -> None:
    """One PNG per template: a row of `per_row` samples per class."""
    from torchvision.utils import save_image

    with staged_dir(Path(out), force, inputs) as tmp:
        for i, (template, grid) in enumerate(grids.items()):
            save_image(grid.float(), tmp / f"grid_{i}.png", nrow=per_row, padding=1)
            (tmp / f"grid_{i}.txt").write_text(f"{template}\n")


def cmd_eval_ar(args: argparse.Namespace) -> int:
    inputs = _check_args(args)
    from onetok import metrics
    from onetok.ar_model import evaluate
    from onetok.eval_setup import fid_extractor
    from onetok.scripts.cmd_ar import _load_model
    from onetok.scripts.sampling_args import prompt_length

    model = _load_model(args.model, args.threads)
    settings = sampling_settings(args, model.settings)
    check_image_tokens(model, args.image_tokens)
    judge = _load_judge(args.judge)
    items = evaluate.load_eval_items(args.data, args.n, model, args.model)  # EvalDataError names args.data
    for caption in items.captions:
        prompt_length(model, caption, what="val caption")
    on_images = None
    if args.fid:  # the reference first: a bad --fid-ref fails before any sampling
        extractor = fid_extractor(args.fid_weights, args.fid_precision, str(model.transformer.output.weight.device))
        meter = metrics.FrechetMeter()
        reference, notes = _gfid_reference(args, model, extractor, meter)

        def on_images(images):
            meter.update(metrics.extract(extractor, images), real=False)
    protocol = evaluate.ClassProtocol(args.per_class, tuple(args.template or evaluate.TEMPLATES),
                                      not args.no_reconstructions)
    start = time.time()
    report = evaluate.evaluate(model, items, settings, args.batch_size, args.seed, args.image_tokens, on_images,
                               judge, protocol, args.sjd)  # ValueError: e.g. too few images for precision/recall
    if args.fid:
        report["gfid"] = _gfid_report(args, model, extractor, meter, reference, notes, inputs)
    report.update(model=str(args.model), data=str(args.data), seconds=round(time.time() - start, 1))
    grids = report.pop("grids", None)
    print(evaluate.format_report(report))
    print(f"settings: cfg {settings.cfg_scale}, temperature {settings.temperature}, top-k {settings.top_k}, "
          f"top-p {settings.top_p}, seed {args.seed}{', SJD' if args.sjd else ''}; {report['seconds']}s",
          file=sys.stderr)
    if args.grids and grids:
        _save_grids(args.grids, grids, min(protocol.keep, protocol.per_class), args.force, inputs)
    if args.json:
        atomic_write_json(args.json, report, args.force, inputs)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from onetok.scripts.cmd_eval import add_fid_args

    p = sub.add_parser("eval-ar", help="judge a unified model on val data: captions and text->image",
                       description="Judge a unified model on val data, with the judge the data call for: shapes "
                                   "(pixel parser), labelled data (a classifier: class accuracy of captions, class "
                                   "fidelity, Fréchet distance, precision/recall and diversity of samples), or any "
                                   "captions (exact match, word F1); optionally gFID.")
    p.add_argument("--model", metavar="DIR", help="a unified model directory (default: the built-in natural-image "
                                                 "model)")
    p.add_argument("--data", required=True, metavar="DATA", help="val image shards, a dataset root, or a token folder")
    p.add_argument("--n", type=int, default=300, metavar="N", help="val images to caption (and, on unlabelled data, "
                                                                 "val captions to draw) (default %(default)s)")
    p.add_argument("--judge", metavar="DIR", help="the judge classifier for labelled data (onetok judge train; "
                                                 "default: the built-in CIFAR-10 judge)")
    p.add_argument("--per-class", type=int, default=100, metavar="N",
                   help="labelled data: samples per class and template (default %(default)s)")
    p.add_argument("--template", action="append", metavar="TEXT",
                   help="labelled data: a prompt template with {label} (repeatable; default 'a photo of a {label}' "
                        "and '{label}')")
    p.add_argument("--no-reconstructions", action="store_true",
                   help="labelled data: skip the tokenizer's reconstructions of val")
    p.add_argument("--grids", metavar="DIR", help="labelled data: write a grid of the first 8 samples per class for "
                                                 "each template here")
    add_sampling_args(p)
    p.add_argument("--sjd", action="store_true", help="sample with speculative Jacobi decoding (same distribution)")
    p.add_argument("--batch-size", type=int, default=100, metavar="B", help="prompts sampled together (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --json / --grids / --fid-stats-out")
    add_fid_args(p, "the gFID reference: an .npz of FID statistics (--fid-stats-out), image shards or a folder of "
                    "images (default: the first --n val images of --data)")
    add_threads_arg(p)
    p.set_defaults(func=cmd_eval_ar)
