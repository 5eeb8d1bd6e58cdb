"""`onetok text-vocab train`: a subword text vocabulary (sentencepiece BPE or unigram) from training captions.

    onetok text-vocab train --captions data/images --size 8000 --out models/text_vocab
    onetok-train fit --config configs/ar/base_256.yaml --data.init_args.text sentencepiece \
        --data.init_args.text_vocab models/text_vocab

--captions takes a dataset root (its train/ split), a token folder, or a shard spec; only the `txt` members are read
(and with --templates the `json` labels: the vocabulary then also learns every caption the templates make for them,
e.g. `--templates ar/cifar10`, the AR config that trains with them).
DIR/text_vocab.model is the vocabulary, DIR/text_vocab.words the words of its captions (a prompt's other words are
named in a warning); the AR checkpoint and the exported unified model carry a copy of both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onetok.fileio import UserError, check_replaceable_dir, staged_dir


def _templates(spec: str):
    """The caption templates of --templates (a YAML file or a shipped config name)."""
    from onetok.ar_model.captions import templates_from_yaml
    from onetok.train_checks import resolve_config

    path = resolve_config(spec)
    try:
        return templates_from_yaml(Path(path).read_text(encoding="utf-8"), spec)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--templates {spec}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    except Exception as err:  # noqa: BLE001 - YAML and template errors alike are the user's file
        raise UserError(f"--templates {spec}: {' '.join(str(err).split())[:200]}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from onetok.ar_model import captions
    from onetok.ar_model.vocab import SPM_FILE, train_sentencepiece

    if args.size < 258:
        raise UserError(f"--size {args.size}: needs at least 258 (<unk>, the 256 byte pieces, and room for merges)")
    if args.max_captions is not None and args.max_captions < 1:
        raise UserError(f"--max-captions {args.max_captions}: must be at least 1")
    out = Path(args.out)
    check_replaceable_dir(out, args.force, inputs=[args.captions])
    paths = captions.caption_shards(args.captions)
    templates = _templates(args.templates) if args.templates else None
    with staged_dir(out, args.force, inputs=[args.captions]) as tmp:
        texts = list(tqdm(captions.iter_captions(paths, args.max_captions), desc="captions", unit="cap",
                          disable=args.quiet))
        if templates is not None:
            texts += captions.template_captions(paths, templates)
        if not any(texts):
            raise UserError(f"{args.captions}: no captions (txt members) found")
        needed = 257 + len({ch for c in texts for ch in c})  # <unk>, 256 byte pieces, every character
        if args.size < needed:
            raise UserError(f"--size {args.size}: needs at least {needed} (<unk>, 256 byte pieces and the "
                            f"captions' {needed - 257} characters) plus room for merges")
        try:
            text = train_sentencepiece(texts, args.size, args.model_type)
        except (RuntimeError, ValueError) as err:  # sentencepiece refuses, e.g. a size the captions cannot fill
            raise UserError(f"sentencepiece: {' '.join(str(err).split())[:300]}") from None
        text.save(tmp / SPM_FILE)
    tokens = sum(len(text.encode(c)) for c in texts) / len(texts)
    size = sum(len(c.encode("utf-8")) for c in texts) / len(texts)
    print(f"wrote {out / SPM_FILE}: {args.model_type} vocabulary of {text.size} pieces from {len(texts)} captions; "
          f"mean {tokens:.1f} tokens per caption vs {size:.1f} bytes ({size / max(tokens, 1e-9):.2f} bytes a token)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("text-vocab", help="subword text vocabularies (sentencepiece) for the unified model",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group_sub = group.add_subparsers(dest="text_vocab_command", required=True, metavar="COMMAND")
    p = group_sub.add_parser("train", help="train a BPE/unigram vocabulary on the training captions",
                             description="Train a sentencepiece BPE or unigram vocabulary on the captions of a "
                                         "dataset, token folder or shard spec; writes OUT/text_vocab.model.")
    p.add_argument("--captions", required=True, help="a dataset root, a token folder, or a shard spec")
    p.add_argument("--size", type=int, required=True, help="vocabulary size in pieces (256 byte pieces included)")
    p.add_argument("--out", required=True, help="output folder (gets text_vocab.model)")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                   help="sentencepiece model type (default %(default)s)")
    p.add_argument("--max-captions", type=int, default=None, help="read at most this many captions")
    p.add_argument("--templates", default=None, metavar="CONFIG",
                   help="also train on every caption these caption templates make for the shards' labels (a YAML "
                        "file or shipped config name, e.g. ar/cifar10)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
