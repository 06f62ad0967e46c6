"""A dependency-free progress bar for long work (feature extraction, training, evaluation).

Draws on stderr only when stderr is a terminal, so logs and CI output stay clean.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """``with Progress(total, "extract") as bar: bar.update(n)``; silent when not on a terminal."""

    def __init__(self, total: int | None, desc: str = "", stream=None, enabled: bool | None = None):
        self.total, self.desc, self.count = total, desc, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and (now - self._last_draw > 0.1 or self.count == self.total):
            self._last_draw = now
            self._draw(postfix)

    def _draw(self, postfix: str) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.count) / rate if rate > 0 else 0.0
            text = f"{self.desc} [{bar:<30}] {self.count}/{self.total} {rate:.1f}/s eta {eta:.0f}s {postfix}"
        else:
            text = f"{self.desc} {self.count} {rate:.1f}/s {postfix}"
        self.stream.write("\r" + text[:200].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

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
