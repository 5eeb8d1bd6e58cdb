"""Progress for the `onetok` commands: a tqdm bar on a terminal, a few plain lines in a log file.

tqdm redraws its bar with carriage returns, which a log file (stderr redirected, `make demo > log`) keeps as one
endless line; there `progress` prints `compress: 30/144 img (21%)` on its own line every 10% (or every minute when the
total is unknown) instead, and nothing for a handful of items.
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    """The subset of tqdm the commands use (update, close, context manager), as occasional whole lines."""

    def __init__(self, total: int | None, desc: str, unit: str, every_s: float = 60.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.shown, self.last = 0, 0, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            due = self.total >= 10 and (self.n - self.shown) * 10 >= self.total and self.n < self.total
        else:
            due = time.monotonic() - self.last >= self.every_s
        if due:
            share = f" ({100 * self.n // self.total}%)" if self.total else ""
            total = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.n}{total} {self.unit}{share}", file=sys.stderr, flush=True)
            self.shown, self.last = self.n, time.monotonic()

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "img", quiet: bool = False):
    """A progress bar (tqdm) when stderr is a terminal, `LineProgress` otherwise, nothing when `quiet`."""
    from tqdm import tqdm

    if quiet:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit)
    return LineProgress(total, desc, unit)
