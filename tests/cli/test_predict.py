"""``medseg predict``: batch with bad cases, manifest, resume and retry, probabilities, stages."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main
from medseg.inference.cohort import find_cases, run_predict
from medseg.io import read_volume
from tests.inference.helpers import blob_cohort, blob_image, make_bundle, save_nifti
from tests.paths import shared_path


def _cohort(root, n=3):
    return blob_cohort(root, n, (16, 16, 16))


def _bad_cases(root):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16, 2), np.float32), np.eye(4)), str(root / "multi4d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(root / "flat2d.nii.gz"))
    (root / "garbage.nii.gz").write_bytes(b"not a nifti file at all")
    nan = blob_image((16, 16, 16))
    nan[3, 4, 5] = np.nan
    save_nifti(nan, root / "withnan.nii.gz", np.eye(4))


def test_bad_cases_fail_clearly_others_finish_and_rerun_retries_only_them(tmp_path, capsys):
    src = _cohort(tmp_path / "in")
    _bad_cases(src)
    bundle = make_bundle(tmp_path / "b")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(bundle), "--input", str(src), "--output", str(out), "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "7 cases: 3 predicted, 0 already done, 4 failed" in text
    man = json.loads((out / "manifest.json").read_text())["cases"]
    codes = {c: e.get("error", {}).get("code") for c, e in man.items()}
    assert codes == {"case_0": None, "case_1": None, "case_2": None, "multi4d": "not_3d", "flat2d": "not_3d",
                     "garbage": "corrupt", "withnan": "non_finite"}
    assert "split it into 3D files" in man["multi4d"]["error"]["message"]
    for c in ("garbage", "multi4d"):
        assert f"{c}.nii.gz" in text      # the summary names the file
    for i in range(3):
        inp = read_volume(src / f"case_{i}.nii.gz")
        got = read_volume(out / f"case_{i}.nii.gz")
        assert got.shape == inp.shape and got.array.dtype == np.uint8
        np.testing.assert_allclose(got.affine, inp.affine, atol=1e-5)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("case_*.nii.gz")}

    # the same command again: done cases skipped, failed ones retried (and fail again)
    rep = run_predict(model=bundle, input_path=src, output=out, device="cpu")
    status = {o.case_id: o.status for o in rep.outcomes}
    assert status == {"case_0": "skipped", "case_1": "skipped", "case_2": "skipped", "flat2d": "failed",
                      "garbage": "failed", "multi4d": "failed", "withnan": "failed"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case_*.nii.gz")} == before
    # a repaired case is predicted on the next run; a damaged output is redone
    save_nifti(blob_image((16, 16, 16), seed=9), src / "garbage.nii.gz", np.eye(4))
    (out / "case_1.nii.gz").write_bytes(b"truncated")
    rep = run_predict(model=bundle, input_path=src, output=out, device="cpu")
    status = {o.case_id: o.status for o in rep.outcomes}
    assert status["garbage"] == "done" and status["case_1"] == "done" and status["case_0"] == "skipped"
    # other settings: everything is predicted again
    rep = run_predict(model=bundle, input_path=src, output=out, device="cpu", overlap=0.25)
    assert sum(o.status == "done" for o in rep.outcomes) == 4


def test_a_bad_bundle_fails_before_the_batch(tmp_path, capsys, caplog):
    src = _cohort(tmp_path / "in", n=1)
    bundle = make_bundle(tmp_path / "b")
    data = (bundle / "model.safetensors").read_bytes()
    (bundle / "model.safetensors").write_bytes(data[:100])
    out = tmp_path / "out"
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(out), "--no-progress"]) == 1
    assert "model.safetensors" in caplog.text and "damaged" in caplog.text
    assert not (out / "manifest.json").exists()
    assert main(["predict", "--model", "no_such_model", "--input", str(src), "--output", str(out)]) == 1
    assert "unknown model 'no_such_model'" in caplog.text


def test_probabilities_are_saved_deterministically_on_the_input_grid(tmp_path):
    src = _cohort(tmp_path / "in", n=1)
    bundle = make_bundle(tmp_path / "b")
    for name in ("o1", "o2"):
        assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(tmp_path / name),
                     "--save-probabilities", "--tta", "2", "--no-progress"]) == 0
    f1, f2 = tmp_path / "o1" / "case_0_probabilities.npz", tmp_path / "o2" / "case_0_probabilities.npz"
    assert f1.read_bytes() == f2.read_bytes()
    assert (tmp_path / "o1" / "case_0.nii.gz").read_bytes() == (tmp_path / "o2" / "case_0.nii.gz").read_bytes()
    with np.load(f1) as z:
        probs, aff, labels = z["probabilities"], z["affine"], z["labels"]
    inp = read_volume(src / "case_0.nii.gz")
    assert probs.dtype == np.float16 and probs.shape == (3, *inp.shape)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=3e-3)
    np.testing.assert_allclose(aff, inp.affine, atol=1e-9)
    assert labels.tolist() == [0, 1, 2]
    lab = read_volume(tmp_path / "o1" / "case_0.nii.gz").array
    agree = np.mean(lab == probs.astype(np.float32).argmax(0))
    assert agree > 0.99   # float16 rounding may flip near-ties only


def test_dicom_folder_as_input(tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    bundle = make_bundle(tmp_path / "b", patch=(40, 56, 40))
    rep = run_predict(model=bundle, input_path=folder, output=tmp_path / "out", device="cpu")
    assert [(o.case_id, o.status) for o in rep.outcomes] == [("udacity_study3_HCropVolume", "done")]
    got = read_volume(tmp_path / "out" / "udacity_study3_HCropVolume.nii.gz")
    inp = read_volume(folder)
    assert got.shape == inp.shape
    np.testing.assert_allclose(got.affine, inp.affine, atol=1e-5)


def test_channel_files_are_grouped(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for c in ("a", "b"):
        for ch in range(2):
            (d / f"{c}_{ch:04d}.nii.gz").write_bytes(b"")
    cases = find_cases(d, channels=2)
    assert [(cid, [p.name for p in ps]) for cid, ps in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    assert [cid for cid, _ in find_cases(d, channels=1)] == ["a_0000", "a_0001", "b_0000", "b_0001"]
    for p in d.glob("*_0001.nii.gz"):
        p.unlink()
    assert [cid for cid, _ in find_cases(d, channels=1)] == ["a", "b"]   # nnU-Net's _0000 dropped


@pytest.mark.parametrize("bad", [["--overlap", "1.0"], ["--batch-size", "0"], ["--tta", "0,3"]])
def test_bad_options_are_refused(tmp_path, bad, caplog):
    src = _cohort(tmp_path / "in", n=1)
    bundle = make_bundle(tmp_path / "b")
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(tmp_path / "o"), *bad]) == 2
    assert not (tmp_path / "o").exists()


def test_predict_postprocess_evaluate_pipeline(tmp_path):
    from medseg.pipeline import run_pipeline

    src = _cohort(tmp_path / "images", n=2)
    refs = tmp_path / "labels"
    refs.mkdir()
    for i in range(2):
        inp = read_volume(src / f"case_{i}.nii.gz")
        from medseg.io import write_volume

        lab = (inp.array > 125).astype(np.uint8)
        write_volume(inp.with_array(lab, is_label=True), refs / f"case_{i}.nii.gz")
    bundle = make_bundle(tmp_path / "b")
    cfg = {"name": "t", "pipeline": "predict_evaluate", "output": str(tmp_path / "run"),
           "params": {"predict": {"model": str(bundle), "input": str(src), "device": "cpu"},
                      "postprocess": {"rules": {"foreground": [{"op": "keep_largest"}]}},
                      "evaluate": {"ref": str(refs), "label_names": {1: "a", 2: "b"}}}}
    from tests.inference.helpers import REPO_ROOT

    ctx = run_pipeline(cfg, config_path=REPO_ROOT / "configs" / "x.yaml")
    r = ctx.results
    assert r["predict"]["done"] == ["case_0", "case_1"] and r["predict"]["failed"] == {}
    assert r["postprocess"]["output"].endswith("postprocess") and r["postprocess"]["done"] == ["case_0", "case_1"]
    assert r["evaluate"]["cases"] == 2 and (tmp_path / "run" / "evaluate" / "report.html").is_file()
    # the postprocessed maps: at most one foreground component each
    from scipy import ndimage

    for i in range(2):
        a = read_volume(tmp_path / "run" / "postprocess" / f"case_{i}.nii.gz").array
        assert ndimage.label(a > 0)[1] <= 1
    # running it again resumes the predict stage
    ctx = run_pipeline(cfg, config_path=REPO_ROOT / "configs" / "x.yaml")
    assert ctx.results["predict"]["skipped"] == ["case_0", "case_1"]


def test_multichannel_model_with_a_missing_channel_file(tmp_path):
    from tests.inference.helpers import TINY_KWARGS

    bundle = make_bundle(tmp_path / "b", kwargs={**TINY_KWARGS, "in_channels": 2})
    src = tmp_path / "in"
    src.mkdir()
    for name, seed in (("a_0000", 0), ("a_0001", 1), ("b_0000", 2)):
        save_nifti(blob_image((16, 16, 16), seed=seed), src / f"{name}.nii.gz", np.eye(4))
    rep = run_predict(model=bundle, input_path=src, output=tmp_path / "out", device="cpu")
    got = {o.case_id: (o.status, (o.error or {}).get("code")) for o in rep.outcomes}
    assert got == {"a": ("done", None), "b": ("failed", "channels")}
    assert "expects 2 input channel(s)" in rep.failed[0].error["message"]
    assert read_volume(tmp_path / "out" / "a.nii.gz").shape == (16, 16, 16)


def test_tta_per_window_flag_reaches_the_manifest(tmp_path, capsys):
    src = _cohort(tmp_path / "in", n=1)
    bundle = make_bundle(tmp_path / "b")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(bundle), "--input", str(src), "--output", str(out), "--device", "cpu",
            "--tta", "1,2", "--tta-per-window", "--no-progress"]
    assert main(argv) == 0
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["tta_axes"] == [1, 2] and params["tta_mode"] == "window"
    assert main(argv) == 0 and "1 already done" in capsys.readouterr().out   # same settings: resumed


def test_bundle_default_tta_and_the_flags_that_override_it(tmp_path, capsys):
    """A bundle's ``inference.tta_axes`` is what ``medseg predict`` mirrors when no flag is given;
    ``--tta AXES`` replaces it, ``--no-tta`` turns it off; the manifest records what was used and the
    prediction equals the Predictor's with the same axes given by hand."""
    from medseg.inference.predictor import Predictor

    src = _cohort(tmp_path / "in", n=1)
    bundle = make_bundle(tmp_path / "b", extra={"inference": {"tta_axes": [1, 2]}})
    base = ["predict", "--model", str(bundle), "--input", str(src), "--device", "cpu", "--no-progress"]
    for flags, want in (([], [1, 2]), (["--no-tta"], []), (["--tta", "0"], [0]), (["--tta"], [0, 1, 2])):
        out = tmp_path / ("out" + "".join(flags).replace("-", "_"))
        assert main([*base, "--output", str(out), *flags]) == 0
        assert json.loads((out / "manifest.json").read_text())["params"]["tta_axes"] == want
    case = sorted(src.glob("*.nii.gz"))[0]
    by_hand = Predictor.from_bundle(bundle, tta_axes=(1, 2)).predict_volume(read_volume(case))
    plain = Predictor.from_bundle(bundle).predict_volume(read_volume(case))       # the API default stays off
    assert plain.label is not None
    got = read_volume(tmp_path / "out" / case.name.replace("_0000", ""))
    np.testing.assert_array_equal(got.array, by_hand.label.array)
    with pytest.raises(SystemExit):
        main([*base, "--output", str(tmp_path / "x"), "--tta", "--no-tta"])     # mutually exclusive
    capsys.readouterr()


@pytest.mark.parametrize("bad", [{"tta_axes": [3]}, {"tta_axes": [1, 1]}, {"tta_axes": "all"}, ["tta_axes"]])
def test_bad_bundle_default_tta_is_refused_naming_the_bundle(tmp_path, bad):
    from medseg.errors import InputError
    from medseg.inference.predictor import Predictor

    bundle = make_bundle(tmp_path / "b", extra={"inference": bad})
    with pytest.raises(InputError, match="tta_axes") as exc:
        Predictor.from_bundle(bundle)
    assert str(bundle) in str(exc.value) or exc.value.path is not None


def test_progress_outside_a_terminal_is_plain_log_lines_over_windows(tmp_path, caplog):
    import logging

    src = _cohort(tmp_path / "in", n=2)
    bundle = make_bundle(tmp_path / "b")
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        rep = run_predict(model=bundle, input_path=src, output=tmp_path / "o", device="cpu", progress=True)
    assert rep.count("done") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.progress"]
    # 16^3 cases, 16^3 windows: one window per case; the last line is written when the bar closes
    assert lines and lines[-1].startswith("predict case_1 (case 2/2): 1/1 windows (100 %)")
    assert all("\r" not in ln for ln in lines)
