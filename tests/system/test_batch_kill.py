"""A batch killed with SIGKILL at random moments and re-run equals an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medseg.batch import _TMP_NAME, MANIFEST, sha256_file
from tests.paths import REPO
from tests.system.kill_helpers import cases_recorded, tree_bytes

WORKER = textwrap.dedent('''
    import sys, time
    import numpy as np
    from medseg.batch import run_batch
    from medseg.fsutil import atomic_path

    def compute(cid, seed):
        time.sleep(0.05)
        return np.random.default_rng(seed).standard_normal((32, 32, 32)).astype(np.float32)

    def write(cid, arr, out):
        paths = [out / "pred" / f"{cid}.npy", out / f"{cid}_stats.json"]
        with atomic_path(paths[0]) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        with atomic_path(paths[1]) as tmp:
            tmp.write_text('{"mean": %.6f}' % float(arr.mean()))
        return paths

    cases = [(f"case_{i:02d}", i) for i in range(12)]
    rep = run_batch(cases, out_dir=sys.argv[1], compute=compute, write=write, params={"seed": "v1"})
    sys.exit(0 if not rep.failed else 3)
''')


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_and_rerun_is_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, str(script), str(ref_dir)], env=_env(), check=True, timeout=120)

    rng = random.Random(7)
    partial = []  # cases done after each kill that landed mid-run
    for it in range(6):
        before = cases_recorded(run_dir)
        proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=_env())
        if it > 0:  # the first kill may hit start-up; the others wait for progress, then a random moment
            deadline = time.monotonic() + 60
            while proc.poll() is None and cases_recorded(run_dir) == before and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.12))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL and 0 < cases_recorded(run_dir) < 12:
            partial.append(cases_recorded(run_dir))
    subprocess.run([sys.executable, str(script), str(run_dir)], env=_env(), check=True, timeout=120)
    assert len(partial) >= 2, partial  # the kills really interrupted runs with work done and left

    ref, got = tree_bytes(ref_dir), tree_bytes(run_dir)
    assert sorted(got) == sorted(ref)  # same files, no temporary files left
    assert not [n for n in got if _TMP_NAME.match(Path(n).name)]
    for name in ref:
        assert got[name] == ref[name], name  # manifest included: it holds no timestamps
    man = json.loads((run_dir / MANIFEST).read_text())
    assert len(man["cases"]) == 12
    for entry in man["cases"].values():
        assert entry["status"] == "done"
        for rel, digest in entry["outputs"].items():
            assert sha256_file(run_dir / rel) == digest
