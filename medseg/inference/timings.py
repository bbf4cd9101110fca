"""Where the time of a ``medseg predict`` run goes: per-case, per-phase timers and ``OUT/timings.csv``.

Phases of one case, and the thread each runs in (:mod:`medseg.batch`)::

    read         prefetch thread   read the channel volumes (ahead of the model)
    preprocess   model thread      stack channels, the bundle's plan (resample, normalise)
    forward      model thread      sliding window (+ mirroring TTA), softmax, back to numpy
    invert       model thread      probabilities back onto the input grid, argmax
    postprocess  model thread      the bundle's post-processing rules
    write        writer thread     label map (+ probabilities) written atomically
    record       writer thread     outputs checksummed and the manifest rewritten

``wait_s`` is how long the model thread sat idle before the case (waiting for it to be read, or
for room in the write queue); ``*_at_s`` columns are moments on the run's clock (seconds since
the run started), so the whole timeline can be redrawn from the file. The wall time of the run
is ``model thread busy + waits + drain`` (the drain: the writer finishing after the last
forward); read, write and record time that is not in the waits or the drain was hidden behind
the model's work. Times come from :func:`time.perf_counter`; a phase not reached (a failed case)
is left empty. ``timings.csv`` holds the cases computed by the latest run (skipped cases are not
listed) and is written at the end of the run; it is a log, not an output, so it is not in the
manifest and not compared on resume.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("read", "preprocess", "forward", "invert", "postprocess", "write", "record")
MODEL_PHASES = ("preprocess", "forward", "invert", "postprocess")
IO_PHASES = ("read", "write", "record")
MOMENTS = ("read_at", "compute_at", "write_at", "done_at")
COLUMNS = ("case", "status", *(f"{p}_s" for p in PHASES), "wait_s", "compute_s", *(f"{m}_s" for m in MOMENTS))
TIMINGS = "timings.csv"


class RunClock:
    """Collects the timings of one run from the three threads (thread-safe)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._last_compute_end = 0.0

    def now(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.t0

    def set(self, case: str, **values: Any) -> None:
        with self._lock:
            self._rows.setdefault(case, {"case": case}).update(values)

    def get(self, case: str, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._rows.get(case, {}).get(key, default)

    def compute_started(self, case: str) -> float:
        """Mark the start of a case's model work; the idle time since the previous case is its ``wait_s``."""
        t = self.now()
        with self._lock:
            self._rows.setdefault(case, {"case": case}).update(compute_at_s=t, wait_s=t - self._last_compute_end)
        return t

    def compute_ended(self, case: str, start: float) -> None:
        t = self.now()
        with self._lock:
            self._rows.setdefault(case, {"case": case})["compute_s"] = t - start
            self._last_compute_end = t

    def finish(self) -> RunTimings:
        wall = self.now()
        with self._lock:
            rows = [dict(r) for r in self._rows.values() if "compute_at_s" in r]
            last = self._last_compute_end
        rows.sort(key=lambda r: r["compute_at_s"])
        return RunTimings(rows, wall_s=wall, drain_s=max(wall - last, 0.0) if rows else 0.0)


@dataclass
class RunTimings:
    """The timings of one run: ``rows`` (one dict per computed case, keys of :data:`COLUMNS`)."""

    rows: list[dict[str, Any]]
    wall_s: float
    drain_s: float

    def total(self, key: str) -> float:
        """Sum of column ``key`` (e.g. ``"forward_s"``) over the cases that have it."""
        return float(sum(r[key] for r in self.rows if r.get(key) is not None))

    @property
    def io_hidden_s(self) -> float:
        """Read + write + record time that did not keep the model thread waiting."""
        io_s = sum(self.total(f"{p}_s") for p in IO_PHASES)
        return max(io_s - self.total("wait_s") - self.drain_s, 0.0)

    def summary(self) -> str:
        """One line: wall time, the sum of the parts per phase, and how much I/O the threads hid."""
        n = len(self.rows)
        if not n:
            return f"timings: no case computed ({self.wall_s:.1f} s)"
        parts = {p: self.total(f"{p}_s") for p in PHASES}
        busy = self.total("compute_s")
        per_phase = ", ".join(f"{p} {v:.1f}" for p, v in parts.items())
        return (f"timings: {n} case(s) in {self.wall_s:.1f} s wall ({self.wall_s / n:.2f} s/case); sum of parts "
                f"{sum(parts.values()):.1f} s ({per_phase}); model thread busy {busy:.1f} s "
                f"({100 * busy / max(self.wall_s, 1e-9):.0f} % of wall), waited {self.total('wait_s'):.1f} s, "
                f"drain {self.drain_s:.1f} s; I/O hidden behind the model {self.io_hidden_s:.1f} s")

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows:
            w.writerow([_cell(r.get(c)) for c in COLUMNS])
        return buf.getvalue()

    def write(self, out_dir: str | Path) -> Path:
        from medseg.fsutil import atomic_write_text

        return atomic_write_text(Path(out_dir) / TIMINGS, self.to_csv())


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return str(v)


def read_timings(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``timings.csv``: numbers as floats, empty cells as None."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        out.append({k: (v if k in ("case", "status") else (float(v) if v != "" else None)) for k, v in r.items()})
    return out
