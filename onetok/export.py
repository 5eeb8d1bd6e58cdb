"""THE exporter contract: a training checkpoint -> an inference folder, one way for every trainable system.

Each system module (`tokenizers.system`, `ar_model.system`, `tokenizers.codec.prior_system`,
`tokenizers.codec.postfilter_system`) has `export_checkpoint(ckpt, out, force=False, inputs=(), ...)`, which writes
through `export_folder`: the folder is built once in a temporary folder beside `out`; an existing `out` is refused
without `force` and, with it, replaced only when onetok wrote every file in it (`onetok.fileio`'s output contract);
the finished folder is renamed onto `out`, so a failed export leaves the old `out` (or nothing) and no temporary
folder. `export` reads a `.ckpt` file and dispatches to the system that wrote it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import staged_dir

EXPORTERS = {  # ckpt["onetok_system"] -> the module holding its export_checkpoint
    "tokenizer": "onetok.tokenizers.system",
    "ar": "onetok.ar_model.system",
    "prior": "onetok.tokenizers.codec.prior_system",
    "postfilter": "onetok.tokenizers.codec.postfilter_system",
}
TOKENIZER_FOLDERS = frozenset({"tokenizer", "postfilter"})  # systems whose export is a tokenizer folder


class CheckpointError(ValueError):
    """A file that is not an onetok training checkpoint, or one that cannot be exported."""


class Exported(NamedTuple):
    path: Path
    system: str  # a key of EXPORTERS

    @property
    def is_tokenizer(self) -> bool:
        return self.system in TOKENIZER_FOLDERS


def export_folder(out: str | os.PathLike, write: Callable[[Path], object], force: bool = False, inputs=()) -> Path:
    """Run `write(folder)` on a new temporary folder beside `out` and rename it onto `out` when it returns (the
    contract in the module docstring); `inputs` are never replaced."""
    with staged_dir(out, force, inputs) as tmp:
        write(tmp)
    return Path(out)


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the length of its JSON header (u64, little-endian), then the header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) of a checkpoint written by onetok-train; CheckpointError (one line) for a
    corrupt or foreign file, FileNotFoundError for a missing one."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such checkpoint file", str(path))
    if is_safetensors(path):
        raise CheckpointError(f"{path}: a safetensors weights file, not a training checkpoint (.ckpt); the folder "
                              "holding it is already an exported model (give the folder to --tokenizer or --model)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: not a checkpoint written by onetok-train (unreadable as a weights-only "
                              f"PyTorch checkpoint: {type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "onetok_system" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by onetok-train (it does not say which onetok "
                              "system wrote it)")
    return ckpt


def export(ckpt_path: str | os.PathLike, out: str | os.PathLike, force: bool = False,
           tokenizer: str | os.PathLike | None = None, sampling: dict | None = None) -> Exported:
    """The inference folder `out` of the checkpoint file `ckpt_path`, written by the system that trained it. An AR
    checkpoint's tokenizer is `tokenizer` when given, else found by its fingerprint (`ar_model.system`); `sampling`
    replaces some of an AR model's recommended sampling settings (`SamplingSettings` fields)."""
    from onetok.fileio import check_replaceable_dir

    ckpt_path, out = Path(ckpt_path), Path(out)
    inputs = [ckpt_path, tokenizer]  # never replaces (or writes into) the checkpoint's folder or the tokenizer
    check_replaceable_dir(out, force, inputs)  # before the (slow) load
    ckpt = load_checkpoint(ckpt_path)
    system = ckpt.get("onetok_system")
    if system not in EXPORTERS:
        raise CheckpointError(f"{ckpt_path}: unknown checkpoint kind {system!r} (expected one of {sorted(EXPORTERS)})")
    if tokenizer is not None and system != "ar":
        raise CheckpointError("--tokenizer applies to AR checkpoints only")
    if sampling and system != "ar":
        raise CheckpointError("sampling settings (--cfg, --temperature, --top-k) apply to AR checkpoints only")
    exporter = importlib.import_module(EXPORTERS[system]).export_checkpoint
    kwargs = {"tokenizer": tokenizer, "sampling": sampling} if system == "ar" else {}
    try:
        exporter(ckpt, out, force, inputs, **kwargs)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as err:
        raise CheckpointError(f"{ckpt_path}: cannot export this {system} checkpoint ({err})") from None
    return Exported(out, system)
