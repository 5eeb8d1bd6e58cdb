"""`onetok export CKPT --out DIR [--force]`: a Lightning training checkpoint -> an inference directory.

`onetok.export.export` reads the checkpoint, and the system that wrote it (`ckpt["onetok_system"]`) writes the folder
under the one exporter contract (built beside DIR, renamed onto it when complete; `--force` replaces only a folder
onetok wrote). An AR checkpoint names its tokenizer by fingerprint: `--tokenizer DIR` gives it (it must match), else
the directory recorded at training or the registry ($ONETOK_HOME/tokenizers, default ~/.onetok) is searched. An
exported tokenizer is registered there, so `onetok decompress` finds it by fingerprint.
"""

from __future__ import annotations

import argparse

from onetok.scripts.arg_types import finite_float


def _run(args: argparse.Namespace) -> int:
    from onetok.export import export
    from onetok.tokenizers import registry

    chosen = {"cfg_scale": args.cfg, "temperature": args.temperature, "top_k": args.top_k}
    exported = export(args.ckpt, args.out, args.force, args.tokenizer,
                      {k: v for k, v in chosen.items() if v is not None})
    print(f"exported {args.ckpt} -> {exported.path}")
    if exported.is_tokenizer and not args.no_register:
        try:
            where = registry.register(exported.path, registry.fingerprint_dir(exported.path))
            print(f"registered as {where} (decompress finds it by fingerprint)")
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
    p.add_argument("--force", action="store_true", help="replace an existing --out (only one onetok wrote)")
    recommend = "AR checkpoints: the model's recommended"
    p.add_argument("--cfg", type=finite_float, metavar="S", help=f"{recommend} guidance scale (default: the run's)")
    p.add_argument("--temperature", type=finite_float, metavar="T", help=f"{recommend} temperature (default: the run's)")
    p.add_argument("--top-k", type=int, metavar="K", help=f"{recommend} top-k (default: the run's)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register an exported tokenizer in $ONETOK_HOME/tokenizers (default ~/.onetok)")
    p.set_defaults(func=_run)
