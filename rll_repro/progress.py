"""Progress of long work (training, feature extraction, evaluation): a bar on a terminal, lines in logs.

- On a terminal (``stream.isatty()``, or ``enabled=True``) a tqdm bar with the elapsed time and an
  ETA. tqdm draws it because it already handles what a hand-made bar gets wrong (terminal width,
  redraws around other output through :meth:`Progress.write`, notebooks); only its speed estimate
  is replaced: tqdm's exponential average starts from the first update, which in training holds
  the start-up (lazy allocations, first-touch of the data), so its first ETA was off by 40x.
  Here the rate is measured over the last ``window`` updates after the first one
  (:meth:`Progress.rate`); before two updates the ETA is ``?``.
- Off a terminal (stderr to a file or a pipe) nothing is drawn; :meth:`Progress.report` writes a
  plain line instead, which the training loop calls every ``display`` iterations, so a log of a
  long run shows it advancing; other work (feature extraction, ...) reports itself every
  ``line_every_s`` seconds (default 30).
- ``enabled=False``: silent.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}]"
BAR_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed} elapsed, {rate_fmt}{postfix}]"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_seconds(seconds: float | None) -> str:
    """``[H:]MM:SS`` as tqdm writes times; ``?`` when unknown."""
    return "?" if seconds is None else tqdm.format_interval(max(seconds, 0.0))


class _Bar(tqdm):
    """tqdm drawing the owner's elapsed time and windowed rate instead of its own estimates."""

    def __init__(self, *args, owner: "Progress", **kwargs):
        self._owner = owner  # before tqdm's __init__, which draws once
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        d = super().format_dict
        d["elapsed"] = self._owner.elapsed()
        d["rate"] = self._owner.rate() or 0.0  # 0: tqdm prints '?' for the rate and the ETA
        return d


class Progress:
    """``with Progress(total, "extract") as bar: bar.update(n)``.

    ``initial``: the count already done (a resumed run's first iteration); ``clock`` (seconds,
    monotonic) is injectable for tests; ``window``: how many recent updates the rate (and so the
    ETA) is measured over; ``line_every_s``: off a terminal, a line at least this often (None:
    only when :meth:`report` is called)."""

    def __init__(self, total: int | None, desc: str = "", stream=None, enabled: bool | None = None, *,
                 initial: int = 0, window: int = 50, clock: Callable[[], float] = time.monotonic,
                 unit: str = "it", line_every_s: float | None = 30.0):
        self.total, self.desc, self.count = total, desc, int(initial)
        self.stream = stream or sys.stderr
        tty = _isatty(self.stream)
        self.draws = tty if enabled is None else bool(enabled)
        self.writes_lines = enabled is None and not tty
        self._clock = clock
        self.start = clock()
        self.line_every_s = line_every_s
        self._last_line = self.start
        self._marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=max(int(window), 1) + 1)
        self._bar = None
        if self.draws:
            self._bar = _Bar(total=total, desc=desc, file=self.stream, unit=unit, dynamic_ncols=True, initial=self.count,
                             bar_format=BAR_FORMAT if total else BAR_FORMAT_NO_TOTAL, owner=self)

    # ------------------------------------------------------------------------- estimates
    def elapsed(self) -> float:
        return self._clock() - self.start

    def rate(self) -> float | None:
        """Units per second over the recent updates, the first update (start-up) left out; None
        until two updates are known."""
        if len(self._marks) < 2:
            return None
        (t0, c0), (t1, c1) = self._marks[0], self._marks[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    def eta(self) -> float | None:
        """Seconds left at the recent rate (None when unknown)."""
        rate = self.rate()
        if not self.total or not rate:
            return None
        return max(self.total - self.count, 0) / rate

    def status(self) -> str:
        """``120/300 (40%), 00:03 elapsed, ETA 00:05, 0.016 s/it`` (the line written off a terminal)."""
        done = f"{self.count}/{self.total} ({100.0 * self.count / self.total:.0f}%)" if self.total else str(self.count)
        rate = self.rate()
        speed = "?" if not rate else (f"{1.0 / rate:.3g} s/it" if rate < 1 else f"{rate:.3g} it/s")
        eta = f", ETA {format_seconds(self.eta())}" if self.total else ""
        return f"{done}, {format_seconds(self.elapsed())} elapsed{eta}, {speed}"

    # ---------------------------------------------------------------------------- output
    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        now = self._clock()
        self._marks.append((now, self.count))
        if self.writes_lines and self.line_every_s is not None and now - self._last_line >= self.line_every_s:
            self.report()
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)

    def report(self, text: str | None = None) -> None:
        """Off a terminal: one line ``<desc>: <status>`` (or ``text``) on the stream."""
        if self.writes_lines:
            self._last_line = self._clock()
            self.stream.write((text if text is not None else f"{self.desc}: {self.status()}") + "\n")
            self.stream.flush()

    def write(self, text: str) -> None:
        """A line above the bar (tqdm clears and redraws it), or plainly when none is drawn."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap an iterable with a :class:`Progress` bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc) as bar:
        for item in iterable:
            yield item
            bar.update()
