"""Progress that means something, on a terminal and in a log file alike.

:func:`progress_bar` gives a tqdm bar when stderr is an interactive terminal, and otherwise a
:class:`PlainProgress` that writes a plain log line (no carriage returns) at most every
``interval_s`` seconds and at the end: ``predict: 120/512 windows (23 %), 40 s, about 2 min left``.
Both take the same calls (``update``, ``reset``, ``set_description``, ``set_postfix_str``, ``close``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

log = logging.getLogger("medseg.progress")


def is_terminal(stream: Any = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    s = sys.stderr if stream is None else stream
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    """``42 s`` (under 100 s), ``3 min``, ``1 h 05 min``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class PlainProgress:
    """A progress counter that logs one line every ``interval_s`` seconds (and when closed), with the
    rate-based time left: for logs, CI and anything that is not a terminal."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, interval_s: float = 30.0,
                 clock=time.monotonic):
        self.total, self.desc, self.unit, self.interval_s, self._clock = total, desc, unit, interval_s, clock
        self.n = 0
        self.postfix = ""
        self._start = self._last = clock()
        self._closed = False

    def line(self) -> str:
        """The progress line as it would be logged now."""
        elapsed = self._clock() - self._start
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f} %)"
        else:
            text += f" {self.unit}"
        text += f", {_duration(elapsed)}"
        if self.total and 0 < self.n < self.total and elapsed > 0:
            text += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval_s:
            self._last = now
            log.info("%s", self.line())

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total
        self._start = self._last = self._clock()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self._closed and self.n and math.isfinite(self.interval_s):
            log.info("%s", self.line())
        self._closed = True


def progress_bar(total: int | None, desc: str, unit: str = "it", *, leave: bool = True, interval_s: float = 30.0,
                 stream: Any = None) -> Any:
    """A tqdm bar on a terminal, else a :class:`PlainProgress` logging a line every ``interval_s`` seconds."""
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=stream)
    return PlainProgress(total, desc, unit, interval_s=interval_s)
