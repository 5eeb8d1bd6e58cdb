"""`onetok judge train` and `onetok judge eval`: the classifier that judges natural-image models (docs/evaluation.md).

    onetok judge train --data ../shared/data/cifar10 --out models/judge     # train/ -> weights, val/ -> accuracy
    onetok judge eval --judge models/judge --data ../shared/data/cifar10/val [--tokenizer DIR]

`train` reads the labelled shards of DATA/train (JSON `label`), trains the recipe of `onetok.ar_model.classifier`
and writes the classifier folder with its accuracy on DATA/val. `eval` prints the accuracy on labelled shards, and
with `--tokenizer` also on the tokenizer's reconstructions of the same images (the ceiling of a model that draws
through that tokenizer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from onetok.fileio import UserError, check_replaceable_dir
from onetok.scripts.arg_types import finite_float, seed
from onetok.scripts.devices import add_threads_arg, check_threads, use_threads


def _split(data: str, name: str) -> str:
    root = Path(data)
    if not (root / name).is_dir():
        raise UserError(f"{data}: no {name}/ folder of shards")
    return str(root / name)


def cmd_train(args: argparse.Namespace) -> int:
    from onetok.ar_model.classifier import PRESETS, TrainSettings

    if args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset}: unknown (known: {', '.join(PRESETS)})")
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    check_threads(args)
    train_spec, val_spec = _split(args.data, "train"), _split(args.data, "val")
    check_replaceable_dir(args.out, args.force, inputs=[args.data])
    use_threads(args.threads)
    from onetok.ar_model import classifier as C

    size = C.PRESETS[args.preset]["image_size"]
    start = time.time()
    train = C.load_labelled(train_spec, size, limit=args.limit)  # OSError / ValueError name the shards
    val = C.load_labelled(val_spec, size, labels=train.labels)
    print(f"{len(train.images)} train / {len(val.images)} val images, {len(train.labels)} classes "
          f"({time.time() - start:.0f}s to read)", file=sys.stderr)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    config = C.classifier_config(args.preset, train.labels)
    model = C.train_classifier(train, config, settings, log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    acc = C.accuracy(model, val.images, val.targets)
    seconds = round(time.time() - start, 1)
    import torch

    extra = {"trained_on": {"data": train_spec, "images": len(train.images)},
             "val": {"data": val_spec, "images": len(val.images), "accuracy": round(acc, 4)},
             "recipe": {**settings._asdict(), "preset": args.preset, "seconds": seconds,
                        "threads": torch.get_num_threads()}}
    model.save_pretrained(args.out, force=args.force, extra=extra)
    print(f"val accuracy {100 * acc:.2f}% on {len(val.images)} images; {seconds}s; wrote {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from onetok.ar_model.classifier import is_classifier_dir

    check_threads(args)
    if not is_classifier_dir(args.judge):
        raise UserError(f"{args.judge}: not a classifier folder (config.json of format onetok-classifier + weights)")
    if args.tokenizer and not (Path(args.tokenizer) / "config.json").is_file():
        raise UserError(f"{args.tokenizer}: not a tokenizer directory")
    use_threads(args.threads)
    from onetok.ar_model.classifier import ImageClassifier, accuracy, load_labelled, reconstruction_accuracy

    model = ImageClassifier.from_pretrained(args.judge)
    data = load_labelled(args.data, model.config.image_size, labels=model.labels, limit=args.limit)
    print(f"accuracy {100 * accuracy(model, data.images, data.targets):.2f}% on {len(data.images)} images")
    if args.tokenizer:
        from onetok.tokenizers import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer).eval()
        if tokenizer.image_size != model.config.image_size:
            raise UserError(f"{args.tokenizer}: {tokenizer.image_size} px, the judge reads {model.config.image_size} px")
        acc, db = reconstruction_accuracy(model, tokenizer, data.images, data.targets)
        print(f"accuracy {100 * acc:.2f}% on the tokenizer's reconstructions (PSNR {db:.2f} dB)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="train or check the classifier that judges natural-image models",
                       description="Train (judge train) or check (judge eval) the classifier that judges "
                                   "natural-image models by the classes of what they draw.")
    judge_sub = p.add_subparsers(dest="judge_command", required=True, metavar="ACTION")
    t = judge_sub.add_parser("train", help="train the judge classifier on labelled shards (DATA/train, DATA/val)",
                             description="Train the judge classifier on DATA/train (shards whose JSON has a label) "
                                         "and report its accuracy on DATA/val.")
    t.add_argument("--data", required=True, metavar="ROOT", help="a dataset root with train/ and val/ shards")
    t.add_argument("--out", required=True, metavar="DIR", help="the classifier folder to write")
    t.add_argument("--preset", default="cifar10", help="network size (default %(default)s)")
    t.add_argument("--epochs", type=int, default=3, help="passes over train/ (default %(default)s)")
    t.add_argument("--batch-size", type=int, default=128, metavar="B", help="default %(default)s")
    t.add_argument("--lr", type=finite_float, default=0.2, help="peak SGD learning rate (default %(default)s)")
    t.add_argument("--seed", type=seed, default=0, help="random seed (default %(default)s)")
    t.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N images only")
    t.add_argument("--force", action="store_true", help="replace an existing --out")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    add_threads_arg(t)
    t.set_defaults(func=cmd_train)
    e = judge_sub.add_parser("eval", help="accuracy of a judge classifier on labelled shards",
                             description="Accuracy on labelled shards; with --tokenizer also on its reconstructions.")
    e.add_argument("--judge", required=True, metavar="DIR", help="a classifier folder (onetok judge train)")
    e.add_argument("--data", required=True, metavar="SHARDS", help="labelled image shards")
    e.add_argument("--tokenizer", metavar="DIR", help="also judge this tokenizer's reconstructions")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="the first N images only")
    add_threads_arg(e)
    e.set_defaults(func=cmd_eval)
