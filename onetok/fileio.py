"""User-facing errors and atomic file output, shared by every command.

Every command reports bad input as a `UserError` (one line, exit code 2) and writes its outputs through
`atomic_output`, so an interrupted run never leaves a half-written file behind and an existing file is only
replaced when the user passed `--force`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """Bad input or a refused action; the CLI prints it as one line and exits with code 2."""


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    with atomic_output(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def staging_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """A new temporary folder beside `out` to build an output folder in; refuses a non-empty `out` unless `force`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out}: already exists and is not empty (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)
    return tmp


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder `tmp` onto `out`; an old `out` is removed only after the new one is in place."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)
