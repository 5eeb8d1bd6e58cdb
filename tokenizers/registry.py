"""Finding a tokenizer directory by its fingerprint, so checkpoints and token folders move between machines.

A tokenizer is named everywhere by `onetok.tokenizers.codec.fingerprint` (16 bytes over its config and weights,
written as 32 hex digits in JSON). `find_tokenizer(fingerprint)` looks through the registry folders:

    extra_dirs (given by the caller, e.g. a --tokenizer flag or a path recorded in a checkpoint), then
    $ONETOK_HOME/tokenizers/*     (ONETOK_HOME defaults to ~/.onetok)

Each candidate is a directory with `config.json` + `model.safetensors` (what `onetok export` writes), or a folder of
such directories. Fingerprints are computed by loading the weights (a tokenizer is at most a few hundred MB), once
per directory and process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path


def onetok_home() -> Path:
    return Path(os.environ.get("ONETOK_HOME", Path.home() / ".onetok")).expanduser()


def registry_dirs() -> list[Path]:
    """Folders whose sub-directories are tokenizers, in search order."""
    return [onetok_home() / "tokenizers"]


def is_tokenizer_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _candidates(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for path in map(Path, paths):
        if is_tokenizer_dir(path):
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.iterdir()) if is_tokenizer_dir(p))


@lru_cache(maxsize=64)
def _fingerprint_cached(path: str, mtime_ns: int) -> str:
    from onetok.tokenizers.codec import fingerprint
    from onetok.tokenizers.model import Tokenizer

    return fingerprint(Tokenizer.from_pretrained(path)).hex()


def fingerprint_dir(path: str | os.PathLike) -> str:
    """THE fingerprint (hex) of the tokenizer saved in `path`."""
    weights = Path(path) / "model.safetensors"
    return _fingerprint_cached(str(Path(path).resolve()), weights.stat().st_mtime_ns)


def find_tokenizer(fingerprint: str, extra_dirs: Iterable[str | os.PathLike | None] = ()) -> Path | None:
    """The first tokenizer directory among `extra_dirs` and the registry whose fingerprint is `fingerprint`."""
    searched = [p for p in extra_dirs if p is not None] + registry_dirs()
    for candidate in _candidates(searched):
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
        raise FileNotFoundError(f"tokenizer {fingerprint[:12]} not found (looked at {recorded or 'no recorded path'} "
                                f"and {', '.join(str(d) for d in registry_dirs())}); pass its directory, or copy it "
                                f"into {registry_dirs()[0]}/")
    return path
