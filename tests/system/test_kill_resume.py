"""``medseg evaluate`` killed at many moments (mid-write included) and resumed; a full disk.

A helper script runs the CLI in a subprocess and SIGKILLs itself at the n-th fsync / rename /
output write (where a write is cut half-way with the half on disk). After every kill each output
is either absent or byte-identical to a clean run's (never partial); a final run leaves exactly
the clean outputs and no temporary file.
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medseg.cli.main import main
from tests.paths import REPO, SAMPLES

OUTPUTS = ("metrics.csv", "summary.json", "report.html")
KILLER = '''
import os, pathlib, signal, sys
mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = [0]
def hit():
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "fsync":
    real_fsync = os.fsync
    os.fsync = lambda fd: (hit(), real_fsync(fd))[1]
elif mode == "replace":
    real_replace = os.replace
    os.replace = lambda a, b: (hit(), real_replace(a, b))[1]
elif mode == "write":
    real_write = pathlib.Path.write_bytes
    def write_bytes(self, data):
        count[0] += 1
        if count[0] == n:  # half of the bytes reach the disk, then the process dies
            with open(self, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, data)
    pathlib.Path.write_bytes = write_bytes
from medseg.cli.main import main
sys.exit(main(args))
'''


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two sample cases (pred, ref folders) and the outputs of a clean run."""
    root = tmp_path_factory.mktemp("cohort")
    for sub in ("pred", "labels"):
        (root / sub).mkdir()
        for cid in ("hippocampus_001", "hippocampus_004"):
            (root / sub / f"{cid}.nii.gz").write_bytes((SAMPLES / "hippocampus" / sub / f"{cid}.nii.gz").read_bytes())
    assert main(_args(root, root / "clean")) == 0
    return root, {n: (root / "clean" / n).read_bytes() for n in OUTPUTS}


def _args(root, out) -> list[str]:
    return ["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "labels"), "--out", str(out),
            "--no-progress"]


def _check(out: pathlib.Path, clean: dict[str, bytes]) -> list[str]:
    """Every output absent or complete; returns the names of left-over temporary files."""
    for n in OUTPUTS:
        p = out / n
        if p.exists():
            assert p.read_bytes() == clean[n], f"{n} is not a complete output"
    return sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS) if out.exists() else []


def test_killed_many_times_then_resumed(cohort, tmp_path):
    root, clean = cohort
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = root / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    points = [("fsync", n) for n in range(1, 7)] + [("replace", n) for n in range(1, 4)] + \
             [("write", n) for n in range(1, 4)]
    kills, leftovers = 0, set()
    for mode, n in points:
        proc = subprocess.run([sys.executable, str(script), mode, str(n), *_args(root, out)], env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (mode, n, proc.stderr.decode()[-800:])
        kills += 1
        leftovers.update(_check(out, clean))
    # kills at random moments of whole runs
    rng = np.random.default_rng(3)
    for delay in rng.uniform(0.2, 1.5, 3):
        proc = subprocess.Popen([sys.executable, "-m", "medseg", *_args(root, out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += proc.returncode == -signal.SIGKILL
        leftovers.update(_check(out, clean))
    assert kills >= 12
    assert leftovers, "the mid-write kills should have left temporary files for the resume to clear"
    assert main(_args(root, out)) == 0  # resume
    assert _check(out, clean) == []  # no temporary file left
    assert {n: (out / n).read_bytes() for n in OUTPUTS} == clean


def test_full_disk_keeps_earlier_outputs_and_says_so(cohort, tmp_path, monkeypatch, caplog):
    root, clean = cohort
    out = tmp_path / "out"
    assert main(_args(root, out)) == 0
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".summary.json."):
            real(self, data[:100])  # part of the bytes fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    rc = main(_args(root, out) + ["--labels", "1"])  # a different run: its metrics.csv differs
    assert rc == 1
    msg = caplog.text
    assert "No space left on device" in msg and "summary.json" in msg and "free some disk space" in msg
    assert (out / "summary.json").read_bytes() == clean["summary.json"]  # the earlier output, intact
    assert (out / "report.html").read_bytes() == clean["report.html"]
    assert (out / "metrics.csv").read_bytes() != clean["metrics.csv"]  # written before the disk filled
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary file


def test_write_error_is_an_oserror_with_a_code(tmp_path, monkeypatch):
    from medseg.fsutil import WriteError, atomic_write_text

    def boom(self, data):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "write_bytes", boom)
    with pytest.raises(OSError) as ei:
        atomic_write_text(tmp_path / "x.txt", "hi")
    assert isinstance(ei.value, WriteError) and ei.value.code == "write_failed"
    assert str(tmp_path / "x.txt") in str(ei.value)
    assert list(tmp_path.iterdir()) == []
