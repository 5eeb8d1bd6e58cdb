"""`onetok export CKPT --out DIR [--force]`: a Lightning training checkpoint -> an inference directory.

The checkpoint says which system wrote it (`ckpt["onetok_system"]`: "tokenizer" or "ar"); that system's
`export_checkpoint(ckpt, out_dir, force)` writes the directory. An AR checkpoint names its tokenizer by fingerprint:
`--tokenizer DIR` gives it (it must match), else the directory recorded at training or the registry
($ONETOK_HOME/tokenizers, default ~/.onetok) is searched. The export goes into a temporary directory beside
DIR that is renamed onto DIR only when complete, so an interrupted export never leaves a half-written model.
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from pathlib import Path

from onetok.fileio import UserError, check_replaceable_dir, staged_dir

EXPORTERS = {
    "tokenizer": "onetok.tokenizers.system",
    "ar": "onetok.ar_model.system",
    "prior": "onetok.tokenizers.codec.prior_system",
    "postfilter": "onetok.tokenizers.codec.postfilter_system",
}


def load_checkpoint(path: Path) -> dict:
    """torch.load(weights_only=True) with one-line errors for a missing, corrupt or foreign file."""
    import torch

    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if is_safetensors(path):
        raise UserError(f"{path}: a safetensors weights file, not a training checkpoint (.ckpt); the folder holding it "
                        "is already an exported model (give the folder to --tokenizer or --model)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserError(f"{path}: not a checkpoint written by onetok-train (unreadable as a weights-only PyTorch "
                        f"checkpoint: {type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "onetok_system" not in ckpt:
        raise UserError(f"{path}: not a checkpoint written by onetok-train (it does not say which onetok system "
                        "wrote it)")
    return ckpt


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the length of its JSON header (u64, little-endian), then the header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def export(ckpt_path: str | Path, out: str | Path, force: bool = False, tokenizer: str | None = None) -> Path:
    ckpt_path, out = Path(ckpt_path), Path(out)
    inputs = [ckpt_path, tokenizer]  # never replaces (or writes into) the checkpoint's folder or the tokenizer
    check_replaceable_dir(out, force, inputs)
    ckpt = load_checkpoint(ckpt_path)
    system = ckpt.get("onetok_system")
    if system not in EXPORTERS:
        raise UserError(f"{ckpt_path}: unknown checkpoint kind {system!r} (expected one of {sorted(EXPORTERS)})")
    if tokenizer is not None and system != "ar":
        raise UserError("--tokenizer applies to AR checkpoints only")
    exporter = importlib.import_module(EXPORTERS[system]).export_checkpoint
    from onetok.tokenizers import domain

    kwargs = {"tokenizer": tokenizer} if system == "ar" else {}
    try:
        with staged_dir(out, force, inputs) as tmp:
            exporter(ckpt, tmp, force=True, **kwargs)
            if system in ("tokenizer", "postfilter"):  # what it knows, for `compress` to warn about far-off inputs
                described, before = domain.describe_training(ckpt), domain.read_trained_on(tmp)
                if system == "postfilter" and before:  # the tokenizer's own record stays first
                    described = f"{before}; its post-filter on {described}"
                domain.record_trained_on(tmp, described)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as err:
        raise UserError(f"{ckpt_path}: cannot export this {system} checkpoint ({err})") from None
    return out


def register_tokenizer(out: Path) -> Path:
    """Make an exported tokenizer findable by `onetok decompress` (the registry in $ONETOK_HOME/tokenizers)."""
    from onetok.tokenizers import registry

    return registry.register(out, registry.fingerprint_dir(out))


def _run(args: argparse.Namespace) -> int:
    out = export(args.ckpt, args.out, args.force, args.tokenizer)
    print(f"exported {args.ckpt} -> {out}")
    if (out / "config.json").is_file() and '"onetok-tokenizer"' in (out / "config.json").read_text():
        if args.no_register:
            return 0
        try:
            print(f"registered as {register_tokenizer(out)} (decompress finds it by fingerprint)")
        except OSError as err:
            print(f"note: not registered in the tokenizer registry ({err})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint (.ckpt) into an inference directory",
                       description="Write the inference directory (config.json + model.safetensors) of a "
                                   "checkpoint written by onetok-train; a tokenizer's config.json also records what "
                                   "it was trained on.")
    p.add_argument("ckpt", metavar="CKPT", help="a Lightning .ckpt written by onetok-train")
    p.add_argument("--out", required=True, metavar="DIR", help="the inference directory to write")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="AR checkpoints: the tokenizer directory (default: found by fingerprint)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-register", action="store_true",
                   help="do not register an exported tokenizer in $ONETOK_HOME/tokenizers (default ~/.onetok)")
    p.set_defaults(func=_run)
