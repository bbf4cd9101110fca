"""Hostile environments (issue 13): output folders that cannot be written, planted lock symlinks,
files medseg does not own, concurrent runs, hand-edited manifests, and names that must survive
the round trip predict -> evaluate."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medseg.batch import LOCK, run_batch
from medseg.errors import MedsegError
from medseg.fsutil import atomic_path, output_lock, unique_names
from tests.inference.helpers import blob_image, make_bundle, oblique_lps_affine, save_nifti


def _compute(cid, x):
    return np.full(3, x, np.int64)


def _write(cid, arr, out: Path):
    p = out / f"{cid}.npy"
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    return [p]


def _cases(n):
    return [(f"case_{i}", i) for i in range(n)]


# ------------------------------------------------------------------------------------------ locks
def test_planted_lock_symlink_is_refused_and_nothing_is_created_outside(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / LOCK).symlink_to(outside / "created_by_medseg")
    with pytest.raises(MedsegError) as ei:
        run_batch(_cases(1), out_dir=out, compute=_compute, write=_write)
    assert ei.value.code == "unsafe_path" and "symbolic link" in str(ei.value)
    assert list(outside.iterdir()) == []
    assert not (out / "case_0.npy").exists()


def test_lock_is_removed_after_a_successful_run_and_a_stale_one_is_taken_over(tmp_path):
    run_batch(_cases(1), out_dir=tmp_path, compute=_compute, write=_write)
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_bytes(b"")            # left by a killed run: nobody holds its flock
    rep = run_batch(_cases(2), out_dir=tmp_path, compute=_compute, write=_write)
    assert rep.count("done") == 1 and rep.count("skipped") == 1
    assert not (tmp_path / LOCK).exists()


def test_evaluate_shares_the_lock_with_predict(tmp_path, caplog):
    from medseg.cli.main import main

    ref = tmp_path / "ref"
    ref.mkdir()
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    save_nifti(lab, ref / "a.nii.gz", np.eye(4))
    out = tmp_path / "ev"
    with output_lock(out):      # what a predict run (or another evaluate) into ``out`` holds
        rc = main(["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(out), "--no-progress"])
        assert rc == 1
        assert not (out / "metrics.csv").exists()
    assert "another medseg run" in caplog.text
    assert main(["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(out), "--no-progress"]) == 0
    assert (out / "metrics.csv").exists() and not (out / LOCK).exists()


@pytest.fixture
def immutable_dir(tmp_path):
    d = tmp_path / "readonly"
    d.mkdir()
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("chattr +i not available (needed for a folder that even root cannot write)")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)


def test_read_only_output_folder_is_a_one_line_error(immutable_dir, tmp_path, caplog):
    from medseg.cli.main import main

    bundle = make_bundle(tmp_path / "b")
    src = tmp_path / "in"
    src.mkdir()
    save_nifti(blob_image((16, 16, 16)), src / "c.nii.gz", oblique_lps_affine(spacing=(1.0, 1.0, 1.0)))
    ref = tmp_path / "ref"
    ref.mkdir()
    save_nifti(np.ones((4, 4, 4), np.uint8), ref / "c.nii.gz", np.eye(4))
    for argv in (["predict", "--model", str(bundle), "--input", str(src), "--output", str(immutable_dir),
                  "--device", "cpu", "--no-progress"],
                 ["predict", "--model", str(bundle), "--input", str(src), "--output", str(immutable_dir / "sub"),
                  "--device", "cpu", "--no-progress"],
                 ["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(immutable_dir), "--no-progress"],
                 ["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(immutable_dir / "sub"),
                  "--no-progress"]):
        caplog.clear()
        assert main(argv) == 2, argv    # an unusable output folder is a usage error, found before any work
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None, caplog.text
        msg = errors[0].getMessage()
        assert "\n" not in msg and ("not writable" in msg or "cannot create" in msg), msg


def test_stale_temp_clean_up_touches_only_medseg_files_at_the_top_level(tmp_path):
    out = tmp_path / "out"
    (out / "user_folder").mkdir(parents=True)
    theirs = out / "user_folder" / ".scan.nii.gz.abcdefgh.tmp.nii.gz"     # looks like ours, in a subfolder
    theirs.write_bytes(b"user data")
    link_target = tmp_path / "precious"
    link_target.write_bytes(b"keep")
    (out / ".x.nii.gz.abcdefgh.tmp.nii.gz").symlink_to(link_target)       # a symlink is never removed
    ours = out / ".case_0.npy.k2j4h6g8.tmp.npy"
    ours.write_bytes(b"half")
    run_batch(_cases(1), out_dir=out, compute=_compute, write=_write)
    assert theirs.read_bytes() == b"user data" and link_target.read_bytes() == b"keep"
    assert (out / ".x.nii.gz.abcdefgh.tmp.nii.gz").is_symlink()
    assert not ours.exists()


# ------------------------------------------------------------------------------------- manifests
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("forge", ["outside", "other_case", "absolute", "string_entry", "int_digest", "list_outputs",
                                   "dotdot_inside", "symlink_out"])
def test_hand_edited_manifest_entries_mean_redo_the_case(tmp_path, forge):
    out = tmp_path / "out"
    run_batch(_cases(2), out_dir=out, compute=_compute, write=_write)
    man_path = out / "manifest.json"
    man = json.loads(man_path.read_text())
    entry = man["cases"]["case_1"]
    (out / "case_1.npy").unlink()        # the case's real output is gone; the forged entry says done
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(out / "case_0.npy", elsewhere / "case_1.npy")
    if forge == "outside":
        entry["outputs"] = {"../elsewhere/case_1.npy": _sha(elsewhere / "case_1.npy")}
    elif forge == "other_case":
        entry["outputs"] = {"case_0.npy": _sha(out / "case_0.npy")}
    elif forge == "absolute":
        entry["outputs"] = {str(elsewhere / "case_1.npy"): _sha(elsewhere / "case_1.npy")}
    elif forge == "string_entry":
        man["cases"]["case_1"] = "done"
    elif forge == "int_digest":
        entry["outputs"] = {"case_1.npy": 12345}
    elif forge == "list_outputs":
        entry["outputs"] = ["case_1.npy"]
    elif forge == "dotdot_inside":
        (out / "sub").mkdir()
        entry["outputs"] = {"sub/../case_0.npy": _sha(out / "case_0.npy")}
    elif forge == "symlink_out":
        (out / "case_1.npy").symlink_to(elsewhere / "case_1.npy")
        entry["outputs"] = {"case_1.npy": _sha(elsewhere / "case_1.npy")}
    man_path.write_text(json.dumps(man))
    rep = run_batch(_cases(2), out_dir=out, compute=_compute, write=_write)
    by = {o.case_id: o.status for o in rep.outcomes}
    assert by == {"case_0": "skipped", "case_1": "done"}, forge
    assert np.load(out / "case_1.npy").tolist() == [1, 1, 1]


# ------------------------------------------------------------------------------------------- names
RAW = ["a b", "a_b", "Müller", "Mäller", "x(1)", "ü", "plain", "dots.in.name", "sp  ace"]


def test_unique_names_are_stable_and_collision_free():
    names = unique_names(RAW)
    assert len(set(names)) == len(RAW)
    assert names[1] == "a_b" and names[6] == "plain" and names[7] == "dots.in.name"   # safe names keep themselves
    assert names[0].startswith("a_b-") and names[2].startswith("M_ller-") and names[3].startswith("M_ller-")
    assert unique_names(list(reversed(RAW))) == list(reversed(names))                # order does not matter
    assert unique_names(["a b"]) == ["a_b"]                                          # no collision, no suffix
    assert unique_names(names) == names                                              # idempotent on outputs


def test_predict_then_evaluate_of_raw_names_pairs_every_case(tmp_path, capsys):
    from medseg.cli.main import main

    bundle = make_bundle(tmp_path / "b")
    src, ref = tmp_path / "in", tmp_path / "ref"
    src.mkdir()
    ref.mkdir()
    aff = oblique_lps_affine(spacing=(1.0, 1.0, 1.0))
    for i, n in enumerate(RAW):
        save_nifti(blob_image((16, 16, 16), seed=i), src / f"{n}.nii.gz", aff)
        save_nifti((blob_image((16, 16, 16), seed=i) > 120).astype(np.uint8), ref / f"{n}.nii.gz", aff)
    out, ev = tmp_path / "pred", tmp_path / "ev"
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert main(["evaluate", "--pred", str(out), "--ref", str(ref), "--out", str(ev), "--no-progress"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["meta"]["failed"] == {} and summary["meta"]["ref_only"] == [] and summary["meta"]["pred_only"] == []
    assert sorted(summary["meta"]["cases"]) == sorted(unique_names(RAW))


def test_control_and_bidi_characters_never_reach_logs_or_csvs(tmp_path, caplog, capsys):
    from medseg.cli.main import main

    ref = tmp_path / "ref"
    ref.mkdir()
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    evil = ["x\nERROR medseg: forged line", "\u202eevil", "bell\x07"]
    for n in evil:
        save_nifti(lab, ref / f"{n}.nii.gz", np.eye(4))
    (ref / "broken\nINFO forged.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "ev"
    with caplog.at_level(logging.DEBUG):
        main(["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(out), "--no-progress"])
    text = caplog.text + capsys.readouterr().err + (out / "metrics.csv").read_text("utf-8")
    assert not any(ln.startswith(("ERROR medseg: forged", "INFO forged")) for ln in text.splitlines())
    assert "\u202e" not in text and "\x07" not in text
    assert "broken\\nINFO forged" in caplog.text       # the bad case is reported, its name escaped


def test_slide_verbs_and_volume_stages_take_the_same_lock(tmp_path):
    from medseg.wsi.tile_slides import TilingParams, tile_slides
    from tests.system.faults import bombs

    png = bombs.png_bomb(tmp_path / "s.png", width=64, height=64)
    out = tmp_path / "tiles"
    with output_lock(out):
        with pytest.raises(MedsegError) as ei:
            tile_slides([png], out, TilingParams(mpp=1.0, tile_size=16, slide_mpp=1.0))
        assert ei.value.code == "busy"
    rows = tile_slides([png], out, TilingParams(mpp=1.0, tile_size=16, slide_mpp=1.0))
    assert len(rows) == 1 and not (out / LOCK).exists()
