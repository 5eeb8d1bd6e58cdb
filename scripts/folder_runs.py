"""Outputs and summaries of the commands that run over many files (`compress`, `decompress`, `eval-compression`).

Output names say what they hold (`output_kind`); every target is checked before anything is written
(`check_targets`: no duplicates, no input, no existing file without --force, a writable place); a folder run lists
and counts what it skipped and why, exits with 1 when it skipped anything and fails in one line when it skipped
everything (`finish`); an interruption or a write error says how many outputs were finished and kept, and how
`--resume` does the rest.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from onetok.fileio import UserError, check_writable


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
