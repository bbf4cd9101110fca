"""medseg.progress: a bar only on a terminal, plain periodic lines with the time left otherwise."""

from __future__ import annotations

import io
import logging

from medseg.progress import PlainProgress, is_terminal, progress_bar


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_progress_logs_a_line_every_interval_with_the_time_left(caplog):
    clock = _Clock()
    p = PlainProgress(40, "predict case_1", "windows", interval_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        clock.t += 10
        p.update(5)                     # 10 s: before the interval, nothing
        clock.t += 20
        p.update(5)                     # 30 s, 10 of 40 done: 30 s per 10 -> 90 s left
        clock.t += 5
        p.update(10)                    # 35 s: within the next interval
        p.reset(total=8)                # the next case
        clock.t += 40
        p.update(2)                     # 40 s for 2 of 8: 120 s = 2 min left
        p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["predict case_1: 10/40 windows (25 %), 30 s, about 90 s left",
                     "predict case_1: 2/8 windows (25 %), 40 s, about 2 min left",
                     "predict case_1: 2/8 windows (25 %), 40 s, about 2 min left"]
    assert all("\r" not in ln for ln in lines)


def test_not_a_terminal_gets_plain_lines():
    buf = io.StringIO()
    assert not is_terminal(buf)
    assert isinstance(progress_bar(3, "x", stream=buf), PlainProgress)
    assert buf.getvalue() == ""            # nothing written to the stream itself (lines go to the log)
