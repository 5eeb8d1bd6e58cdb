"""User-facing errors and the output contract, shared by every command.

Every command reports bad input as a `UserError` (one line, exit code 2) and writes its outputs under one contract
(`check_output`, then `atomic_output` for a file or `staged_dir` for a folder):

- an output is never one of the command's inputs: not an input file, not an input folder, nothing inside an input
  folder and no folder holding an input -- with or without `--force`;
- the current folder and the folders above it are never output folders;
- an existing output is replaced only with `--force`, and only when onetok wrote it: a file recognised by its format
  (an `.otok` file, a PNG or JSON report carrying onetok's `written_by` mark) or listed in the `.onetok-output`
  manifest of its folder; a folder only when its manifest lists every file in it (otherwise the error names the
  files onetok did not write);
- outputs are built beside their place and renamed onto it when complete, so an interrupted run or a failed
  replacement leaves the old output intact and nothing else behind; files and folders get the user's umask.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from onetok import __version__

WRITTEN_BY = f"onetok {__version__}"  # the mark on onetok's JSON and PNG outputs
MANIFEST = ".onetok-output"  # in an output folder: the files onetok wrote there
GLOB_CHARS = "*?[{"


class UserError(Exception):
    """Bad input or a refused action; the CLI prints it as one line and exits with code 2."""


def load_error(path: str | os.PathLike, what: str, err: BaseException) -> UserError:
    """The one line for a saved model that does not load: `PATH: cannot load the WHAT (ErrorType: message)`."""
    detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300]
    return UserError(f"{path}: cannot load the {what} ({type(err).__name__}: {detail})")


# --------------------------------------------------------------------------------------------------------------------
# Inputs: what an output may never be
# --------------------------------------------------------------------------------------------------------------------

FileId = tuple[int, int]  # (st_dev, st_ino): the same file under any name


def file_ids(paths: Iterable[str | os.PathLike]) -> frozenset[FileId]:
    """The identities of the existing files among `paths` (hard links included)."""
    ids = set()
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def _expand(spec: str) -> list[Path]:
    """The paths a spec names: itself, or the files a glob or brace pattern (`/data/{000..009}.tar`) matches."""
    if not any(c in spec for c in GLOB_CHARS):
        return [Path(spec)]
    specs = [spec]
    if "{" in spec:
        try:
            import braceexpand
        except ImportError:  # the package reading such shards is missing too
            return []
        specs = list(braceexpand.braceexpand(spec))
    return [Path(p) for s in specs for p in (glob.glob(s) if any(c in s for c in "*?[") else [s])]


class Inputs:
    """What a command reads: files, folders and shard patterns, resolved once, checked against each output."""

    def __init__(self, specs: Iterable[str | os.PathLike | None] = (), ids: Collection[FileId] = ()):
        self.given = [str(s) for s in specs if s is not None and str(s) != ""]
        self.paths = [(g if Path(g) == p else str(p), p.resolve()) for g in self.given for p in _expand(g)]
        self.ids = frozenset(ids) | file_ids(Path(g) for g in self.given)

    def clash(self, out: str | os.PathLike) -> str | None:
        """Why `out` may not be written (it is, is inside, or holds an input), or None."""
        path = Path(out)
        resolved = path.resolve()
        for given, src in self.paths:
            if resolved == src:
                return f"is the input {given}"
            if src in resolved.parents:
                return f"is inside the input folder {given}"
            if resolved in src.parents:
                return f"holds the input {given}"
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in self.ids:
                return "is one of the inputs"
        return None


def _as_inputs(inputs) -> Inputs:
    if isinstance(inputs, Inputs):
        return inputs
    if isinstance(inputs, frozenset):  # file ids, from `file_ids`
        return Inputs(ids=inputs)
    return Inputs(inputs)


# --------------------------------------------------------------------------------------------------------------------
# What onetok wrote
# --------------------------------------------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> set[str] | None:
    """The files (paths relative to `folder`) its `.onetok-output` manifest lists, or None without one."""
    try:
        meta = json.loads((Path(folder) / MANIFEST).read_text())
        return {str(f) for f in meta["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _files_below(folder: Path) -> list[str]:
    files = []
    for root, _, names in os.walk(folder):
        files += [Path(root, n).relative_to(folder).as_posix() for n in names]
    return sorted(files)


def write_manifest(folder: str | os.PathLike, names: Iterable[str] | None = None) -> None:
    """Record in `folder`'s manifest that onetok wrote `names` there (default: every file below it); names already
    listed stay listed."""
    folder = Path(folder)
    names = set(_files_below(folder) if names is None else names) | (read_manifest(folder) or set())
    names.discard(MANIFEST)
    text = json.dumps({"written_by": WRITTEN_BY, "files": sorted(names)}, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f"{MANIFEST}.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, folder / MANIFEST)


def _marked(path: Path) -> bool:
    """A file whose format says onetok wrote it: `.otok`, a PNG with onetok's Software text, a JSON report or FID
    statistics carrying `written_by`."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:4] == b"OTOK":
                return True
            if head == b"\x89PNG\r\n\x1a\n":
                from PIL import Image

                with Image.open(path) as im:
                    return str(im.info.get("Software", "")).startswith("onetok")
            if head[:1] == b"{":
                f.seek(0)
                text = f.read(1 << 20)
                return bool(text.startswith(b"{") and b'"written_by": "onetok' in text)
            if head[:4] == b"PK\x03\x04" and path.suffix == ".npz":
                import numpy as np

                with np.load(path, allow_pickle=False) as data:
                    return "protocol" in data and '"written_by": "onetok' in str(data["protocol"])
    except (OSError, ValueError, SyntaxError):  # unreadable: not recognisably ours
        return False
    return False


def onetok_wrote(path: str | os.PathLike) -> bool:
    """Whether the existing file `path` was written by onetok (by its format, or listed in its folder's manifest)."""
    path = Path(path)
    listed = read_manifest(path.parent)
    return (listed is not None and path.name in listed) or _marked(path)


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """The files below `folder` that onetok did not write there (not in its manifest)."""
    listed = read_manifest(folder) or set()
    return [f for f in _files_below(Path(folder)) if f != MANIFEST and f not in listed]


def png_info():
    """The PNG text chunk that marks a PNG as onetok's (pass as `pnginfo=` to PIL's save)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", WRITTEN_BY)
    return info


# --------------------------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------------------------


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


def check_place(path: str | os.PathLike, inputs=()) -> None:
    """Refuse `path` as an output of a command reading `inputs`, or as the current folder or one above it."""
    path, inputs = Path(path), _as_inputs(inputs)
    if str(path) == "-":
        raise UserError("-: outputs go to files, not to standard output; name a file or a folder")
    why = inputs.clash(path)
    if why:
        raise UserError(f"{path}: {why}; an output is never an input (even with --force)")
    here, resolved = Path.cwd().resolve(), path.resolve()
    if resolved == here or resolved in here.parents:
        raise UserError(f"{path}: is the current folder" + ("" if resolved == here else " or holds it")
                        + "; give a new folder for the output")


def _check_file(path: Path, force: bool) -> None:
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    if not path.exists():
        return
    if not path.is_file():
        raise UserError(f"{path}: is not a regular file; refusing to replace it")
    if not force:
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    if not onetok_wrote(path):
        raise UserError(f"{path}: exists and onetok did not write it; refusing to replace it (even with --force): "
                        "move it away or choose another name")


def _check_folder(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"{out}: already exists and is not empty (use --force to replace it)")
    foreign = foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{out}: holds files onetok did not write ({shown}); refusing to replace it (even with "
                        "--force): move them away or choose another folder")


def check_output(path: str | os.PathLike, force: bool = False, inputs=(), folder: bool = False) -> Path:
    """THE output contract (module docstring): refuse `path` as an output file (or `folder`) of a command reading
    `inputs` (paths and patterns, an `Inputs`, or `file_ids`), before any work starts."""
    path = Path(path)
    check_place(path, inputs)
    (_check_folder if folder else _check_file)(path, force)
    return check_location(path)


def check_writable(path: str | os.PathLike, force: bool, protect=()) -> Path:
    """An output file under the contract (`check_output`)."""
    return check_output(path, force, protect)


def check_replaceable_dir(out: str | os.PathLike, force: bool, inputs=()) -> Path:
    """An output folder under the contract (`check_output`)."""
    return check_output(out, force, inputs, folder=True)


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, inputs=()) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_output(path, force, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False, inputs=()) -> Path:
    with atomic_output(path, force, inputs) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, force: bool = False, inputs=()) -> Path:
    """`obj` as indented JSON (one trailing newline), written atomically; a dict report carries `written_by` first."""
    if isinstance(obj, dict):
        obj = {"written_by": WRITTEN_BY, **{k: v for k, v in obj.items() if k != "written_by"}}
    text = json.dumps(finite_json(obj), indent=1, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode(), force, inputs)


def finite_json(obj):
    """`obj` with every nan or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def staging_dir(out: str | os.PathLike, force: bool = False, inputs=()) -> Path:
    """A new temporary folder beside `out` to build an output folder in (see `check_output`)."""
    out = check_output(out, force, inputs, folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _finish_modes(folder: Path) -> None:
    """Every file and folder below `folder` with the user's umask (safetensors writes 0600, mkdtemp 0700)."""
    umask = _umask()
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root, d), 0o777 & ~umask)
        for n in names:
            p = Path(root, n)
            if not p.is_symlink():
                os.chmod(p, (0o777 if os.access(p, os.X_OK) else 0o666) & ~umask)


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder `tmp` onto `out`, marked as onetok's (manifest, umask); an old `out` is removed only
    after the new one is in place, and put back if that fails."""
    tmp, out = Path(tmp), Path(out)
    write_manifest(tmp)
    _finish_modes(tmp)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    try:
        os.replace(out, old / out.name)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old / out.name, out)  # the old output back in its place, nothing else left
        old.rmdir()
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, force: bool = False, inputs=()) -> Iterator[Path]:
    """Yield a new folder beside `out` to build the output in (see `staging_dir`); it replaces `out` only if the
    block succeeds, and is removed in any case."""
    tmp = staging_dir(out, force, inputs)
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
