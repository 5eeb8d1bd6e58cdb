"""Where tokenizers are found: the built-in ones shipped in the package, and a user registry.

A `.otok` file names its tokenizer only by fingerprint (`onetok.tokenizers.codec.fingerprint`), so `onetok
decompress` looks the fingerprint up here when no `--tokenizer` is given:

- built in: `onetok/tokenizers/pretrained/<name>/` (config.json + model.safetensors), installed with the package;
  `photo` is the default tokenizer of `onetok compress`;
- registered: every folder (or symlink to a folder) in `$ONETOK_HOME/tokenizers/` (default `~/.onetok/tokenizers`)
  holding config.json + model.safetensors. `onetok export` registers what it exports as a symlink named by the
  fingerprint, so a lookup only loads the folders whose name does not already say which fingerprint they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT = "photo"
FILES = ("config.json", "model.safetensors")


def is_tokenizer_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in FILES)


def home() -> Path:
    return Path(os.environ.get("ONETOK_HOME") or Path.home() / ".onetok").expanduser()


def registry_dir() -> Path:
    return home() / "tokenizers"


def builtin(name: str = DEFAULT) -> Path:
    """The folder of a built-in tokenizer; FileNotFoundError naming the choices when there is none."""
    path = BUILTIN_DIR / name
    if not is_tokenizer_dir(path):
        names = sorted(p.name for p in BUILTIN_DIR.glob("*") if is_tokenizer_dir(p)) if BUILTIN_DIR.is_dir() else []
        raise FileNotFoundError(f"no built-in tokenizer {name!r} (built in: {', '.join(names) or 'none'})")
    return path


def candidates() -> list[Path]:
    """Every tokenizer folder to search: the built-in ones, then the registry's (sorted, stale links skipped)."""
    found = []
    for base in (BUILTIN_DIR, registry_dir()):
        if base.is_dir():
            found += [p for p in sorted(base.iterdir()) if not p.name.startswith(".") and is_tokenizer_dir(p)]
    return found


def _fingerprint_of(path: Path) -> bytes:
    from onetok.tokenizers.codec import fingerprint
    from onetok.tokenizers.model import Tokenizer

    return fingerprint(Tokenizer.from_pretrained(path))


def find(fp: bytes) -> Path | None:
    """The folder of the tokenizer with fingerprint `fp`, or None. Folders named by another fingerprint are skipped
    without loading; the others are loaded and fingerprinted."""
    for path in candidates():
        named = _named_fingerprint(path.name)
        if named is not None and named != fp.hex():
            continue
        try:
            if _fingerprint_of(path) == fp:
                return path
        except (OSError, ValueError, RuntimeError):  # a broken folder in the registry is not fatal to a lookup
            continue
    return None


def _named_fingerprint(name: str) -> str | None:
    """The hex fingerprint a registry entry is named by (32 hex digits), if it is."""
    return name if len(name) == 32 and all(c in "0123456789abcdef" for c in name) else None


def register(directory: str | os.PathLike, fp: bytes) -> Path:
    """Make `directory` findable by fingerprint: a symlink `$ONETOK_HOME/tokenizers/<fingerprint hex>` to it."""
    target = Path(directory).resolve()
    if not is_tokenizer_dir(target):
        raise FileNotFoundError(f"{target}: not a tokenizer folder (needs {' and '.join(FILES)})")
    link = registry_dir() / fp.hex()
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
    return link
