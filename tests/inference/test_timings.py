"""``medseg predict`` writes OUT/timings.csv: every phase of every case, non-negative and consistent.

No assertion here is about speed: only that the timers exist, are sane (non-negative, parts
inside the spans that contain them) and that the summary adds them up correctly.
"""

from __future__ import annotations

import csv
import json

import pytest

from medseg.cli.main import main
from medseg.inference.cohort import run_predict
from medseg.inference.timings import COLUMNS, MODEL_PHASES, PHASES, TIMINGS, RunTimings, read_timings
from tests.inference.helpers import blob_cohort, make_bundle

EPS = 1e-5  # the CSV keeps 6 decimals


def _cohort(root, n=4):
    return blob_cohort(root, n, (18, 20, 16))


def test_timings_file_has_every_phase_non_negative_and_consistent(tmp_path, capsys):
    src = _cohort(tmp_path / "in")
    (src / "garbage.nii.gz").write_bytes(b"not a nifti file")
    bundle = make_bundle(tmp_path / "b")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(out), "--device", "cpu",
                 "--save-probabilities", "--no-progress", "-v"]) == 1    # garbage fails, the others finish
    text = capsys.readouterr().out
    assert "timings: 5 case(s) in" in text and "sum of parts" in text     # with -v only
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(tmp_path / "o2"),
                 "--device", "cpu", "--no-progress"]) == 1
    assert "timings:" not in capsys.readouterr().out

    with open(out / TIMINGS, newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == COLUMNS
    rows = {r["case"]: r for r in read_timings(out / TIMINGS)}
    assert sorted(rows) == ["case_0", "case_1", "case_2", "case_3", "garbage"]
    assert "timings.csv" not in json.loads((out / "manifest.json").read_text())["cases"]

    for cid, r in rows.items():
        for key in ("wait_s", "compute_s", "read_s", "read_at_s", "compute_at_s", "done_at_s"):
            assert r[key] is not None and r[key] >= 0, (cid, key)
        # the moments follow the case through the pipeline
        assert r["read_at_s"] + r["read_s"] <= r["compute_at_s"] + EPS
        assert r["compute_at_s"] + r["compute_s"] <= r["done_at_s"] + EPS
    bad = rows.pop("garbage")
    assert bad["status"] == "failed"
    assert all(bad[f"{p}_s"] is None for p in (*MODEL_PHASES, "write", "record"))   # phases never reached

    for cid, r in rows.items():
        assert r["status"] == "done"
        for p in PHASES:
            assert r[f"{p}_s"] is not None and r[f"{p}_s"] >= 0, (cid, p)
        # the model-thread phases lie inside the case's compute span, written after compute, recorded after writing
        assert sum(r[f"{p}_s"] for p in MODEL_PHASES) <= r["compute_s"] + 4 * EPS
        assert r["compute_at_s"] + r["compute_s"] <= r["write_at_s"] + EPS
        assert r["write_at_s"] + r["write_s"] + r["record_s"] == pytest.approx(r["done_at_s"], abs=3 * EPS)

    # one model thread: cases do not overlap there, and each case's wait is the gap since the previous one
    ordered = sorted([*rows.values(), bad], key=lambda r: r["compute_at_s"])
    prev_end = 0.0
    for r in ordered:
        assert r["compute_at_s"] >= prev_end - EPS
        assert r["wait_s"] == pytest.approx(r["compute_at_s"] - prev_end, abs=3 * EPS)
        prev_end = r["compute_at_s"] + r["compute_s"]


def test_summary_adds_up_the_rows():
    rows = [{"case": "a", "status": "done", "read_s": 1.0, "preprocess_s": 0.5, "forward_s": 2.0, "invert_s": 0.25,
             "postprocess_s": 0.25, "write_s": 0.5, "record_s": 0.5, "wait_s": 1.0, "compute_s": 3.0},
            {"case": "b", "status": "done", "read_s": 1.0, "preprocess_s": 0.5, "forward_s": 2.0, "invert_s": 0.25,
             "postprocess_s": 0.25, "write_s": 0.5, "record_s": 0.5, "wait_s": 0.0, "compute_s": 3.0},
            {"case": "c", "status": "failed", "read_s": 0.5, "wait_s": 0.0, "compute_s": 0.0}]
    t = RunTimings(rows, wall_s=8.0, drain_s=1.0)
    assert t.total("forward_s") == 4.0 and t.total("read_s") == 2.5
    # read 2.5 + write 1 + record 1 = 4.5 s of I/O; the model waited 1 s and the drain took 1 s: 2.5 s hidden
    assert t.io_hidden_s == pytest.approx(2.5)
    s = t.summary()   # parts: 2 x (1 + 0.5 + 2 + 0.25 + 0.25 + 0.5 + 0.5) + 0.5 = 10.5 s
    assert "3 case(s) in 8.0 s wall" in s and "sum of parts 10.5 s" in s and "forward 4.0" in s
    assert "model thread busy 6.0 s (75 % of wall)" in s and "I/O hidden behind the model 2.5 s" in s


def test_resumed_run_times_only_the_cases_it_computes(tmp_path):
    src = _cohort(tmp_path / "in", n=3)
    bundle = make_bundle(tmp_path / "b")
    out = tmp_path / "out"
    first = run_predict(model=bundle, input_path=src, output=out, device="cpu")
    assert len(first.timings.rows) == 3
    (out / "case_1.nii.gz").unlink()
    again = run_predict(model=bundle, input_path=src, output=out, device="cpu")
    assert [r["case"] for r in again.timings.rows] == ["case_1"]
    assert [r["case"] for r in read_timings(out / TIMINGS)] == ["case_1"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
