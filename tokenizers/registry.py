"""Where tokenizers are found by their fingerprint, so `.otok` files, checkpoints and token folders move between
machines.

A tokenizer is named everywhere by `fingerprint` below (16 bytes over its config and weights; 32
hex digits in JSON). `find_tokenizer(fingerprint)` looks through, in order:

- the folders a caller passes (a `--tokenizer` flag, a path recorded in a checkpoint);
- the built-in tokenizers shipped in the package, `onetok/tokenizers/pretrained/<name>/` (`photo` is the default
  tokenizer of `onetok compress`);
- the user registry `$ONETOK_HOME/tokenizers/` (default `~/.onetok/tokenizers`): every folder, or symlink to a
  folder, holding config.json + model.safetensors. `onetok export` registers what it exports as a symlink named by
  its fingerprint, so a lookup skips the entries named by another fingerprint without loading them.

Fingerprints of other folders are computed by loading the weights, once per folder and process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from onetok.tokenizers.codec.format import FINGERPRINT_BYTES

if TYPE_CHECKING:
    import torch

BUILTIN_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT = "photo"
FILES = ("config.json", "model.safetensors")


def is_tokenizer_dir(path: str | os.PathLike) -> bool:
    return all((Path(path) / name).is_file() for name in FILES)


def onetok_home() -> Path:
    return Path(os.environ.get("ONETOK_HOME") or Path.home() / ".onetok").expanduser()


def registry_dir() -> Path:
    """The user registry folder (`onetok export` registers tokenizers here)."""
    return onetok_home() / "tokenizers"


def registry_dirs() -> list[Path]:
    """Folders whose sub-folders are tokenizers, in search order: the built-in ones, then the user registry."""
    return [BUILTIN_DIR, registry_dir()]


def builtin(name: str = DEFAULT) -> Path:
    """The folder of a built-in tokenizer; FileNotFoundError naming the choices when there is none."""
    path = BUILTIN_DIR / name
    if not is_tokenizer_dir(path):
        names = [p.name for p in _candidates([BUILTIN_DIR])]
        raise FileNotFoundError(f"no built-in tokenizer {name!r} (built in: {', '.join(names) or 'none'})")
    return path


def _candidates(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for path in map(Path, paths):
        if is_tokenizer_dir(path):
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.iterdir()) if not p.name.startswith(".") and is_tokenizer_dir(p))


@lru_cache(maxsize=64)
def _fingerprint_cached(path: str, mtime_ns: int, kind: str) -> str:

    if kind == "prior":
        from onetok.tokenizers.codec.prior import TilePrior as saved
    else:
        from onetok.tokenizers.model import Tokenizer as saved
    return fingerprint(saved.from_pretrained(path)).hex()


def _fingerprint(path: str | os.PathLike, kind: str) -> str:
    """Loaded once per folder, kind and version of its weights in this process."""
    weights = Path(path) / "model.safetensors"
    return _fingerprint_cached(str(Path(path).resolve()), weights.stat().st_mtime_ns, kind)


def fingerprint_dir(path: str | os.PathLike) -> str:
    """THE fingerprint (hex) of the tokenizer saved in `path`."""
    return _fingerprint(path, "tokenizer")


def _named_fingerprint(name: str) -> str | None:
    """The fingerprint a registry entry is named by (32 hex digits), if it is."""
    return name if len(name) == 32 and all(c in "0123456789abcdef" for c in name) else None


def find_tokenizer(fingerprint: str, extra_dirs: Iterable[str | os.PathLike | None] = ()) -> Path | None:
    """The first tokenizer folder among `extra_dirs`, the built-in ones and the registry whose fingerprint (hex) is
    `fingerprint`, or None."""
    searched = [p for p in extra_dirs if p is not None] + registry_dirs()
    for candidate in _candidates(searched):
        named = _named_fingerprint(candidate.name)
        if named is not None and named != fingerprint:
            continue
        try:
            if fingerprint_dir(candidate) == fingerprint:
                return candidate.resolve()
        except (OSError, ValueError, KeyError, RuntimeError):  # an unreadable folder is not a match
            continue
    return None


def resolve_tokenizer(fingerprint: str, given: str | os.PathLike | None = None,
                      recorded: str | os.PathLike | None = None) -> Path:
    """The tokenizer with `fingerprint`: `given` (must match), else `recorded` or the registry.

    Raises FileNotFoundError when none is found, ValueError when `given` is another tokenizer."""
    if given is not None:
        if not is_tokenizer_dir(given):
            raise FileNotFoundError(f"{given}: not a tokenizer directory (no config.json + model.safetensors)")
        found = fingerprint_dir(given)
        if found != fingerprint:
            raise ValueError(f"{given}: this is tokenizer {found[:12]}, but the data/model were made with tokenizer "
                             f"{fingerprint[:12]}")
        return Path(given).resolve()
    path = find_tokenizer(fingerprint, [recorded] if recorded is not None and is_tokenizer_dir(recorded) else [])
    if path is None:
        raise FileNotFoundError(f"tokenizer {fingerprint[:12]} not found (looked at {recorded or 'no recorded path'}, "
                                f"the built-in tokenizers and {registry_dir()}); pass its directory, or register it "
                                f"with `onetok export` / copy it into {registry_dir()}/")
    return path


def register(directory: str | os.PathLike, fingerprint: str) -> Path:
    """Make `directory` findable by fingerprint: a symlink `$ONETOK_HOME/tokenizers/<fingerprint hex>` to it."""
    target = Path(directory).resolve()
    if not is_tokenizer_dir(target):
        raise FileNotFoundError(f"{target}: not a tokenizer folder (needs {' and '.join(FILES)})")
    link = registry_dir() / fingerprint
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
    return link


# --------------------------------------------------------------------------------------------------------------------
# Priors of the entropy coder (`onetok.tokenizers.codec.prior`): a `prior/` folder beside a tokenizer, or registered
# --------------------------------------------------------------------------------------------------------------------


def prior_beside(tokenizer_dir: str | os.PathLike) -> Path | None:
    """The prior shipped with a tokenizer (`<tokenizer>/prior/`), if there is one."""
    path = Path(tokenizer_dir) / "prior"
    return path if is_tokenizer_dir(path) else None


def prior_fingerprint_dir(path: str | os.PathLike) -> str:
    """The fingerprint (hex) of the entropy coder's prior saved in `path`."""
    return _fingerprint(path, "prior")


def find_prior(fingerprint: str, extra_dirs: Iterable[str | os.PathLike | None] = ()) -> Path | None:
    """The prior folder with this fingerprint (hex): among `extra_dirs`, the `prior/` folders of every known
    tokenizer, and `$ONETOK_HOME/priors/*`."""
    beside = [prior_beside(t) for t in _candidates(registry_dirs())]
    searched = [p for p in (*extra_dirs, *beside) if p is not None] + [onetok_home() / "priors"]
    for candidate in _candidates(searched):
        try:
            if prior_fingerprint_dir(candidate) == fingerprint:
                return candidate.resolve()
        except (OSError, ValueError, KeyError, RuntimeError, TypeError):
            continue
    return None


def fingerprint(tokenizer: torch.nn.Module) -> bytes:
    """16 bytes of sha256 over the config (sorted JSON; `LATER_FIELDS` at their old values left out) and every
    state_dict tensor (name, dtype, shape, bytes)."""
    import torch  # here, so that finding folders by name does not load torch

    h = hashlib.sha256(b"onetok-fingerprint-v1\0")
    config = dataclasses.asdict(tokenizer.config)
    for name, old_value in getattr(tokenizer.config, "LATER_FIELDS", {}).items():
        if config.get(name) == old_value:  # a field added later, at the value of the models made before it
            del config[name]
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    state = tokenizer.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:FINGERPRINT_BYTES]
