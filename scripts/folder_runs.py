"""Outputs and summaries of the commands that run over many files (`compress`, `decompress`, `eval-compression`).

Output names say what they hold (`output_kind`); every target is checked before anything is written
(`check_targets`: no duplicates, no input, no existing file without --force, a writable place); a folder run lists
and counts what it skipped and why, exits with 1 when it skipped anything and fails in one line when it skipped
everything (`finish`); an interruption or a write error says how many outputs were finished and kept, and how
`--resume` does the rest.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import UserError, check_writable


class Item(NamedTuple):
    src: Path  # input file
    rel: Path  # its name below the output folder


SIDECARS = (".txt", ".json")  # captions and metadata beside images (our layout, img2dataset's): not images


def _wanted(path: Path, suffix: str | None) -> bool:
    """An `suffix` file (when given), else an image by name or content."""
    from onetok.data.images import looks_like_image

    return path.name.lower().endswith(suffix) if suffix else looks_like_image(path)


def _walk(folder: Path, suffix: str | None, ignored: list[Path]) -> list[Path]:
    def fail(err: OSError) -> None:
        raise UserError(f"{err.filename}: unreadable folder ({err.strerror})")

    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"{folder}: unreadable folder")
    from onetok.data.images import files_below

    files = []
    for path in files_below(folder, on_error=fail):
        if _wanted(path, suffix):
            files.append(path)
        elif suffix or not path.name.lower().endswith(SIDECARS):
            ignored.append(path)
    return files


def collect(inputs: list[str], suffix: str | None = None, ignored: list[Path] | None = None) -> list[Item]:
    """Files given directly, and the files below each folder that the command can read: `suffix` files if given,
    else images by name or content (`onetok.data.images.looks_like_image`); the other files below a folder (but
    hidden ones and .txt/.json sidecars) are added to `ignored`, for the note at the end."""
    items, ignored = [], ignored if ignored is not None else []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            items += [Item(f, f.relative_to(path)) for f in _walk(path, suffix, ignored)]
        elif path.is_file():
            items.append(Item(path, Path(path.name)))
        elif path.exists():
            raise UserError(f"{path}: not a regular file or folder")
        else:
            raise UserError(f"{path}: no such file or folder")
    if not items:
        what = f"*{suffix} files" if suffix else "image files"
        raise UserError(f"{' '.join(inputs)}: no {what} found" + (f" (ignored {len(ignored)} other file(s): "
                                                                   f"{ignored[0]}, ...)" if ignored else ""))
    return items


def unique_targets(items: list[Item], suffix: str) -> list[Path]:
    """Output names below the output folder, `a.png` -> `a.SUFFIX`; inputs whose names would meet (`a.png` and
    `a.jpg`) keep their extension (`a.png.SUFFIX`, `a.jpg.SUFFIX`), decided before any work."""
    plain = [item.rel.with_suffix(suffix) for item in items]
    count = Counter(p.as_posix().lower() for p in plain)
    names = [p if count[p.as_posix().lower()] == 1 else item.rel.with_name(item.rel.name + suffix)
             for item, p in zip(items, plain)]
    seen: dict[str, Path] = {}
    for item, name in zip(items, names):
        key = name.as_posix().lower()
        if key in seen:
            raise UserError(f"{item.src}: its output name {name} is also that of {seen[key]}; rename one of them")
        seen[key] = item.src
    return names


def png_names(base: Path, stem: str, n: int) -> list[Path]:
    """`stem.png` for a one-image file, `stem_000.png ...` for a batch."""
    if n == 1:
        return [base / f"{stem}.png"]
    digits = max(3, len(str(n - 1)))
    return [base / f"{stem}_{i:0{digits}d}.png" for i in range(n)]


def ignored_note(ignored: list[Path]) -> None:
    """One line at the end of a folder run: the files below its folders that were not inputs."""
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:4]) + (f" and {len(ignored) - 4} more" if len(ignored) > 4 else "")
        print(f"note: ignored {len(ignored)} file(s) that are not inputs of this command: {shown}", file=sys.stderr)


class Skip(NamedTuple):
    message: str  # one line naming the file and the reason
    why: str  # the reason in two or three words, counted in the summary


def single_input(inputs: list[str]) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).is_file()


def output_kind(out: Path, suffix: str, single: bool, what: str) -> str:
    """"file" or "folder" for -o OUT, by its name: a `suffix` name is a file, a name without an extension (or an
    existing folder) a folder; anything else would hold what its extension does not say and is refused."""
    if out.is_dir():
        return "folder"
    if out.suffix.lower() == suffix:
        if not single:
            raise UserError(f"{out}: several inputs need a folder output (-o DIR)"
                            + ("; --batch packs them into one .otok file" if suffix == ".otok" else ""))
        return "file"
    if out.suffix and not single:
        raise UserError(f"{out}: several inputs need a folder output (-o DIR), not a name with an extension")
    if out.suffix:
        raise UserError(f"{out}: {what} writes {suffix} files: name the output *{suffix}, or give a folder")
    if out.exists():
        raise UserError(f"{out}: exists and is not a folder")
    return "folder"


def check_targets(targets: list[Path], force: bool, protect) -> None:
    """Refuse duplicate output names, inputs as outputs and (without --force) existing outputs, before anything is
    written."""
    seen: set[Path] = set()
    for t in targets:
        if t in seen:
            raise UserError(f"{t}: two inputs map to this output name")
        seen.add(t)
        check_writable(t, force, protect)


def finish(done: int, skipped: list[Skip], total: int, out: Path, verb: str) -> int:
    """Skipped files and the exit code of a folder run: 0, 1 when some inputs were skipped, a UserError when none
    could be done."""
    if done == 0 and skipped:  # one line: the counts and the first reason
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"{out}: nothing {verb}: all {total} input(s) skipped ({reasons(skipped)}); first: "
                        f"{skipped[0].message}{more}")
    for s in skipped:
        print(f"skipped {s.message}", file=sys.stderr)
    return 1 if skipped else 0


def image_skip(err: UserError) -> Skip:
    text = str(err)
    large = any(w in text for w in ("px a side", "too many pixels", "decompression bomb"))
    return Skip(text, "too large" if large else "unreadable")


def reasons(skipped: list[Skip]) -> str:
    return ", ".join(f"{n} {why}" for why, n in Counter(s.why for s in skipped).most_common())


def skipped_text(skipped: list[Skip], resumed: int) -> str:
    text = f"; skipped {len(skipped)}" + (f" ({reasons(skipped)})" if skipped else "")
    return text + (f"; {resumed} already done earlier (--resume)" if resumed else "")


def interrupted(err: KeyboardInterrupt, done: int, total: int, out: Path):
    """The same interruption, saying what was kept and how to finish."""
    return type(err)(f"{done} of {total} outputs finished and kept in {out}; run the same command with --resume "
                     "to do the rest")


def write_failed(err: OSError, done: int, total: int, out: Path) -> UserError:
    """A full disk or a vanished folder in the middle of a folder run: one line saying what is kept and how to go on."""
    return UserError(f"{err.filename or out}: {err.strerror or err}; {done} of {total} outputs finished and kept in "
                     f"{out}: fix that, then run the same command with --resume")


def format_bpp(bpp: float) -> str:
    """Bits per pixel with 4 decimals, or 3 significant digits when that would print 0.0000."""
    return f"{bpp:.4f}" if bpp >= 0.01 else f"{bpp:.3g}"


class Totals(NamedTuple):
    images: int = 0
    bytes: int = 0
    pixels: int = 0
    tokens: int = 0
    tiles: int = 0

    def add(self, encoded, size: int) -> Totals:
        """These totals plus one coded image (a `compress.Encoded`) of `size` file bytes."""
        image, counts = encoded.image, encoded.counts
        return Totals(self.images + 1, self.bytes + size, self.pixels + image.width * image.height,
                      self.tokens + int(counts.sum()), self.tiles + len(counts))

    def summary(self) -> str:
        bpp = format_bpp(8 * self.bytes / self.pixels) if self.pixels else "-"
        return (f"compressed {self.images} image(s) into {self.bytes} bytes: {bpp} bits per original pixel, "
                f"{self.tokens / max(self.tiles, 1):.2f} tokens per tile on average")
