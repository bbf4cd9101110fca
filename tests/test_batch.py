"""Cohort runner: manifest, resume, retries, failures, overlap of load/compute/write."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from medseg.batch import LOCK, MANIFEST, params_hash, read_manifest, run_batch, sha256_file
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.fsutil import atomic_path, output_lock


def _compute(cid, seed):
    return np.random.default_rng(seed).standard_normal((4, 5, 6)).astype(np.float32)


def _write(cid, arr, out: Path):
    p = out / f"{cid}.npy"
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return [p]


def _cases(n=5):
    return [(f"case_{i:02d}", i) for i in range(n)]


def test_run_then_resume_skips_and_manifest_records(tmp_path):
    rep = run_batch(_cases(), out_dir=tmp_path, compute=_compute, write=_write, params={"m": 1})
    assert [o.status for o in rep.outcomes] == ["done"] * 5
    man = json.loads((tmp_path / MANIFEST).read_text())
    assert man["params_hash"] == params_hash({"m": 1})
    e = man["cases"]["case_03"]
    assert e["status"] == "done" and e["outputs"] == {"case_03.npy": sha256_file(tmp_path / "case_03.npy")}
    np.testing.assert_array_equal(np.load(tmp_path / "case_03.npy"), _compute("case_03", 3))
    calls = []
    rep2 = run_batch(_cases(), out_dir=tmp_path, compute=lambda c, d: calls.append(c) or _compute(c, d),
                     write=_write, params={"m": 1})
    assert calls == [] and rep2.count("skipped") == 5


def test_truncated_missing_and_changed_params_are_redone(tmp_path):
    run_batch(_cases(), out_dir=tmp_path, compute=_compute, write=_write, params={"m": 1})
    good = (tmp_path / "case_01.npy").read_bytes()
    (tmp_path / "case_01.npy").write_bytes(good[:-7])        # truncated output
    (tmp_path / "case_02.npy").unlink()                        # missing output
    man = read_manifest(tmp_path)
    del man["cases"]["case_04"]                                # missing manifest entry
    (tmp_path / MANIFEST).write_text(json.dumps(man))
    calls = []
    compute = lambda c, d: calls.append(c) or _compute(c, d)  # noqa: E731
    run_batch(_cases(), out_dir=tmp_path, compute=compute, write=_write, params={"m": 1})
    assert calls == ["case_01", "case_02", "case_04"]
    assert (tmp_path / "case_01.npy").read_bytes() == good
    calls.clear()
    run_batch(_cases(), out_dir=tmp_path, compute=compute, write=_write, params={"m": 2})
    assert len(calls) == 5
    (tmp_path / MANIFEST).write_text("{not json")               # unreadable manifest: everything again
    calls.clear()
    run_batch(_cases(), out_dir=tmp_path, compute=compute, write=_write, params={"m": 2})
    assert len(calls) == 5


def test_failures_are_recorded_and_only_they_are_retried(tmp_path):
    def load(seed):
        if seed == 1:
            raise InputError("cannot read", path="case_01.nii.gz", code="truncated")
        return seed

    def compute(cid, seed):
        if seed == 3:
            raise ValueError("model blew up")
        return _compute(cid, seed)

    rep = run_batch(_cases(), out_dir=tmp_path, load=load, compute=compute, write=_write)
    assert [o.status for o in rep.outcomes] == ["done", "failed", "done", "failed", "done"]
    man = read_manifest(tmp_path)
    assert man["cases"]["case_01"]["error"] == {"code": "truncated", "message": "case_01.nii.gz: cannot read"}
    assert man["cases"]["case_03"]["error"]["code"] == "ValueError"
    assert not (tmp_path / "case_01.npy").exists()
    calls = []
    rep2 = run_batch(_cases(), out_dir=tmp_path, compute=lambda c, d: calls.append(c) or _compute(c, d),
                     write=_write)
    assert calls == ["case_01", "case_03"]
    assert rep2.count("done") == 2 and rep2.count("skipped") == 3 and not rep2.failed


def test_write_outside_folder_or_nothing_fails_the_case(tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere.npy"

    def write(cid, arr, o):
        if cid == "case_00":
            outside.write_bytes(b"x")
            return [outside]
        if cid == "case_01":
            return []
        return _write(cid, arr, o)

    rep = run_batch(_cases(3), out_dir=out, compute=_compute, write=write)
    assert [o.status for o in rep.outcomes] == ["failed", "failed", "done"]
    assert rep.outcomes[0].error["code"] == "unsafe_path" and rep.outcomes[1].error["code"] == "missing_output"


def test_bad_arguments_and_busy_folder(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        run_batch([("a", 1), ("a", 2)], out_dir=tmp_path, compute=_compute, write=_write)
    with pytest.raises(ConfigError, match="JSON"):
        run_batch(_cases(1), out_dir=tmp_path, compute=_compute, write=_write, params={"x": object()})
    with output_lock(tmp_path):
        with pytest.raises(MedsegError, match="another medseg run") as ei:
            run_batch(_cases(1), out_dir=tmp_path, compute=_compute, write=_write)
        assert ei.value.code == "busy"
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()  # removed when the run that held it ends


def test_stale_temporary_files_are_removed(tmp_path):
    stale = tmp_path / ".case_00.npy.ab_3x9zq.tmp.npy"
    stale.write_bytes(b"half")
    keep = tmp_path / ".hidden_user_file"
    keep.write_bytes(b"mine")
    run_batch(_cases(1), out_dir=tmp_path, compute=_compute, write=_write)
    assert not stale.exists() and keep.exists()


def test_load_and_write_overlap_compute(tmp_path):
    """compute(case 0) waits until case 1 is being loaded; compute(case 1) until case 0 is being written."""
    loading, writing = {}, {}
    for i in range(3):
        loading[i], writing[i] = threading.Event(), threading.Event()

    def load(i):
        loading[i].set()
        return i

    def compute(cid, i):
        if i == 0:
            assert loading[1].wait(5), "next case was not prefetched while computing"
        if i == 1:
            assert writing[0].wait(5), "finished case was not written while computing"
        return _compute(cid, i)

    def write(cid, arr, out):
        writing[int(cid[-2:])].set()
        return _write(cid, arr, out)

    rep = run_batch(_cases(3), out_dir=tmp_path, load=load, compute=compute, write=write)
    assert [o.status for o in rep.outcomes] == ["done"] * 3


def test_interrupt_in_compute_keeps_finished_cases(tmp_path):
    def compute(cid, i):
        if i == 2:
            raise KeyboardInterrupt
        return _compute(cid, i)

    with pytest.raises(KeyboardInterrupt):
        run_batch(_cases(4), out_dir=tmp_path, compute=compute, write=_write)
    man = read_manifest(tmp_path)
    assert sorted(man["cases"]) == ["case_00", "case_01"]
    rep = run_batch(_cases(4), out_dir=tmp_path, compute=_compute, write=_write)
    assert [o.status for o in rep.outcomes] == ["skipped", "skipped", "done", "done"]


def test_relative_output_folder(tmp_path, monkeypatch):
    """A relative ``out_dir`` (as typed on a command line) works: outputs recorded once, resume skips."""
    monkeypatch.chdir(tmp_path)
    rep = run_batch(_cases(2), out_dir="rel/out", compute=_compute, write=_write)
    assert [o.status for o in rep.outcomes] == ["done", "done"]
    man = json.loads((tmp_path / "rel/out" / MANIFEST).read_text())
    assert set(man["cases"]["case_01"]["outputs"]) == {"case_01.npy"}
    rep2 = run_batch(_cases(2), out_dir="rel/out", compute=_compute, write=_write)
    assert rep2.count("skipped") == 2
