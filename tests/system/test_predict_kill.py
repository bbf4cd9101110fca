"""``medseg predict`` killed with SIGKILL at random moments and re-run equals an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.batch import _TMP_NAME, MANIFEST, sha256_file
from tests.inference.helpers import REPO_ROOT, blob_cohort, make_bundle
from tests.system.kill_helpers import cases_recorded, output_bytes

N_CASES = 8


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cmd(bundle: Path, src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medseg", "predict", "--model", str(bundle), "--input", str(src), "--output",
            str(out), "--device", "cpu", "--threads", "1", "--save-probabilities", "--no-progress"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_predict_killed_and_rerun_is_identical(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    src = blob_cohort(tmp_path / "in", N_CASES, (40, 48, 36))
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(bundle, src, ref_dir), env=_env(), check=True, timeout=180, capture_output=True)

    rng = random.Random(11)
    partial = []
    for it in range(4):
        before = cases_recorded(run_dir)
        proc = subprocess.Popen(_cmd(bundle, src, run_dir), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if it > 0:  # the first kill may land in start-up; the others after a case was recorded
            deadline = time.monotonic() + 90
            while proc.poll() is None and cases_recorded(run_dir) == before and time.monotonic() < deadline:
                time.sleep(0.005)
        # odd rounds kill at a random moment; even rounds right after a case was recorded, so that
        # at least one kill lands mid-run even when the cases are fast on a quiet machine
        time.sleep(rng.uniform(0.0, 0.3) if it % 2 else 0.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL and 0 < cases_recorded(run_dir) < N_CASES:
            partial.append(cases_recorded(run_dir))
    subprocess.run(_cmd(bundle, src, run_dir), env=_env(), check=True, timeout=180, capture_output=True)
    assert partial, "no kill interrupted a run that had work done and left"

    ref, got = output_bytes(ref_dir), output_bytes(run_dir)
    assert sorted(got) == sorted(ref)          # same files, no temporary files left
    assert not [n for n in got if _TMP_NAME.match(Path(n).name)]
    for name in ref:
        assert got[name] == ref[name], name    # label maps, probabilities and the manifest
    man = json.loads((run_dir / MANIFEST).read_text())
    assert sorted(man["cases"]) == [f"case_{i}" for i in range(N_CASES)]
    for cid, entry in man["cases"].items():
        assert entry["status"] == "done"
        assert set(entry["outputs"]) == {f"{cid}.nii.gz", f"{cid}_probabilities.npz"}
        for rel, digest in entry["outputs"].items():
            assert sha256_file(run_dir / rel) == digest
