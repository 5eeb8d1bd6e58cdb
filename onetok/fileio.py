"""User-facing errors and atomic file output, shared by every command.

Every command reports bad input as a `UserError` (one line, exit code 2) and writes its outputs through
`atomic_output`, so an interrupted run never leaves a half-written file behind and an existing file is only
replaced when the user passed `--force`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path


class UserError(Exception):
    """Bad input or a refused action; the CLI prints it as one line and exits with code 2."""


def load_error(path: str | os.PathLike, what: str, err: BaseException) -> UserError:
    """The one line for a saved model that does not load: `PATH: cannot load the WHAT (ErrorType: message)`."""
    detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300]
    return UserError(f"{path}: cannot load the {what} ({type(err).__name__}: {detail})")


FileId = tuple[int, int]  # (st_dev, st_ino): the same file under any name


def file_ids(paths: Iterable[str | os.PathLike]) -> frozenset[FileId]:
    """The identities of the existing files among `paths`, for `check_writable(protect=...)`."""
    ids = set()
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def check_location(path: str | os.PathLike) -> Path:
    """Refuse an output whose folder cannot be written (missing and not creatable, read-only, not a folder, full of
    inodes): probed with a temporary file in the nearest existing folder, before any long work starts."""
    path = Path(path)
    folder = path.absolute().parent
    while not folder.exists():  # folders still to be created
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{path}: cannot be created ({folder} is not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".onetok-probe.", dir=folder)
    except OSError as err:
        raise UserError(f"{path}: cannot write in {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_writable(path: str | os.PathLike, force: bool, protect: Collection[FileId] = ()) -> Path:
    """Refuse to replace an existing file unless `force`, to replace one of the inputs (`protect`, from `file_ids`)
    even with `force`, to write over a folder or a device, and to write where no file can be created."""
    path = Path(path)
    if path.exists():
        st = path.stat()
        if (st.st_dev, st.st_ino) in protect:
            raise UserError(f"{path}: is one of the inputs; refusing to overwrite it (even with --force)")
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not a file")
        if not path.is_file():
            raise UserError(f"{path}: is not a regular file; refusing to replace it")
        if not force:
            raise UserError(f"{path}: already exists (use --force to overwrite)")
    return check_location(path)


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


def atomic_write_json(path: str | os.PathLike, obj, force: bool = False) -> Path:
    """`obj` as indented JSON (one trailing newline), written atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode(), force)


def check_replaceable_dir(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output folder that exists and is not empty (unless `force`), that is or holds one of `inputs` (even
    with `force`: replacing it would delete them), or that cannot be created."""
    out = Path(out)
    if out.exists():
        resolved = out.resolve()
        for given in inputs:
            src = Path(given).resolve()
            if src == resolved or resolved in src.parents:
                raise UserError(f"{out}: holds the input {given}; refusing to replace it (even with --force)")
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not force:
            raise UserError(f"{out}: already exists and is not empty (use --force to replace it)")
    return check_location(out)


def staging_dir(out: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """A new temporary folder beside `out` to build an output folder in (see `check_replaceable_dir`)."""
    out = check_replaceable_dir(out, force, inputs)
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


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a new folder beside `out` to build the output in (see `staging_dir`); it replaces `out` only if the
    block succeeds, and is removed in any case."""
    tmp = staging_dir(out, force, inputs)
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
