"""The ``medseg`` command ends without the interpreter's module teardown (:func:`medseg.cli.main.exit_now`)
but otherwise as a normal exit: its code, the non-daemon threads joined, the exit handlers run, the
buffered output flushed; ``MEDSEG_SLOW_EXIT=1`` takes the ordinary way with the same outcome."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import REPO

CODE = r'''
import atexit, pathlib, sys, threading, time
from medseg.cli.main import exit_now
atexit.register(lambda: print("handler ran"))
def late():
    time.sleep(0.3)
    pathlib.Path(sys.argv[1]).write_text("written by a thread")
threading.Thread(target=late).start()
print("buffered", end="")
exit_now(3)
'''


@pytest.mark.parametrize("slow", [False, True])
def test_exit_now_joins_threads_runs_handlers_and_flushes(tmp_path, slow):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MEDSEG_SLOW_EXIT", None)
    if slow:
        env["MEDSEG_SLOW_EXIT"] = "1"
    r = subprocess.run([sys.executable, "-c", CODE, str(tmp_path / "f.txt")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 3, r.stderr
    assert r.stdout == "bufferedhandler ran\n"
    assert (tmp_path / "f.txt").read_text() == "written by a thread"


def test_python_m_medseg_reports_the_exit_code(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "medseg", "info", str(tmp_path / "missing.nii.gz")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "missing.nii.gz" in r.stderr
