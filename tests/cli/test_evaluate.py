"""``medseg evaluate`` end to end on small real folders, and the ``evaluate`` pipeline stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli.main import main
from medseg.io import read_volume, write_volume
from medseg.report.writers import CSV_COLUMNS, read_metrics_csv
from tests.paths import shared_path


def _sd_pkg():
    np.Inf = np.inf  # noqa: NPY201 -- surface-distance 0.1 still uses np.Inf (removed in NumPy 2)
    import surface_distance

    return surface_distance


@pytest.fixture
def cohort(tmp_path):
    src = shared_path("hippocampus", "labelsTr")
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    names = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_008"]
    for n in names[:4]:
        shutil.copy(src / f"{n}.nii.gz", ref / f"{n}.nii.gz")
    v = read_volume(src / "hippocampus_001.nii.gz", is_label=True)
    a = v.array.copy()
    a[ndimage.binary_dilation(a == 1) & (a == 0)] = 1      # anterior dilated
    a = np.where(a == 2, 0, a)                             # posterior missing -> pred_empty
    write_volume(v.with_array(a), pred / "hippocampus_001.nii.gz")
    v3 = read_volume(src / "hippocampus_003.nii.gz", is_label=True)
    from dataclasses import replace
    write_volume(replace(v3, spacing_mm=(1.0, 1.0, 2.0)), pred / "hippocampus_003.nii.gz")  # geometry mismatch
    data = (src / "hippocampus_004.nii.gz").read_bytes()
    (pred / "hippocampus_004.nii.gz").write_bytes(data[: len(data) // 2])                   # corrupt
    shutil.copy(src / "hippocampus_008.nii.gz", pred / "hippocampus_008.nii.gz")            # no reference
    # hippocampus_006: reference without prediction
    return pred, ref


def _run(pred, ref, out, *extra, rc=0):
    got = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--no-progress", *extra])
    assert got == rc
    return read_metrics_csv(out / "metrics.csv")


def _diag(path):
    v = read_volume(path, is_label=True)
    return float(np.sqrt(np.sum((np.array(v.shape) * np.array(v.spacing_mm)) ** 2)))


def test_cli_cohort_statuses_and_outputs(cohort, tmp_path):
    pred, ref = cohort
    # 3 of 4 references have no usable prediction: exit 1 after writing everything
    rows = _run(pred, ref, tmp_path / "out", "--nsd-tolerance-mm", "1.5", "--label-names", "1=anterior,2=posterior",
                rc=1)
    header = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == list(CSV_COLUMNS)
    st = {(r["case"], r["label"]): r["status"] for r in rows}
    assert len(rows) == 8  # 4 references x 2 labels; the prediction-only case is listed, not scored
    assert st[("hippocampus_001", 1)] == "ok" and st[("hippocampus_001", 2)] == "pred_empty"
    assert st[("hippocampus_003", 1)] == st[("hippocampus_003", 2)] == "error:geometry_mismatch"
    assert st[("hippocampus_004", 1)].startswith("error:")
    assert st[("hippocampus_006", 1)] == "error:missing_pred"
    r1 = next(r for r in rows if r["case"] == "hippocampus_001" and r["label"] == 1)
    ref1 = read_volume(ref / "hippocampus_001.nii.gz", is_label=True)
    pred1 = read_volume(pred / "hippocampus_001.nii.gz", is_label=True)
    sdp = _sd_pkg()
    sd = sdp.compute_surface_distances(ref1.array == 1, pred1.array == 1, ref1.spacing_mm)
    assert abs(r1["hd95_mm"] - sdp.compute_robust_hausdorff(sd, 95)) <= 1e-6
    assert abs(r1["nsd"] - sdp.compute_surface_dice_at_tolerance(sd, 1.5)) <= 1e-6
    assert r1["dice"] == pytest.approx(sdp.compute_dice_coefficient(ref1.array == 1, pred1.array == 1))
    r2 = next(r for r in rows if r["case"] == "hippocampus_001" and r["label"] == 2)
    assert r2["hd95_mm"] == pytest.approx(float(np.sqrt(np.sum((np.array(ref1.shape) * ref1.spacing_mm) ** 2))))

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["meta"]["pred_only"] == ["hippocampus_008"]
    assert summary["meta"]["ref_only"] == ["hippocampus_006"]
    s1 = summary["labels"]["1"]
    # failed and missing cases enter the mean with the worst values: Dice 0, HD95 the image diagonal
    assert s1["name"] == "anterior" and s1["n_failed"] == 3 and s1["dice"]["n"] == 4
    assert s1["dice"]["n_imputed"] == 3 and s1["dice"]["n_left_out"] == 0
    assert s1["dice"]["mean"] == pytest.approx(r1["dice"] / 4)
    worst = {c: _diag(ref / f"{c}.nii.gz") for c in ("hippocampus_003", "hippocampus_004", "hippocampus_006")}
    for r in rows:
        if r["case"] in worst:
            assert (r["dice"], r["iou"], r["nsd"]) == (0.0, 0.0, 0.0)
            assert r["hd95_mm"] == pytest.approx(worst[r["case"]])
    assert s1["hd95_mm"]["mean"] == pytest.approx((r1["hd95_mm"] + sum(worst.values())) / 4)
    assert summary["meta"]["failed_policy"] == "worst" and summary["meta"]["empty_reference"] == "score"
    assert summary["labels"]["2"]["n_pred_empty"] == 1
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "hippocampus_006" in html and "surface-distance" in html
    assert "(worst value)" in html


def test_cli_exclude_failed_is_explicit_and_reported(cohort, tmp_path, capsys):
    pred, ref = cohort
    _run(pred, ref, tmp_path / "ex", "--exclude-failed", rc=1)
    assert "left out of the means (--exclude-failed)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    s1 = summary["labels"]["1"]
    assert summary["meta"]["failed_policy"] == "exclude"
    assert s1["dice"]["n"] == 1 and s1["dice"]["n_left_out"] == 3 and s1["dice"]["n_imputed"] == 0


def test_cli_empty_prediction_folder_exits_1(tmp_path):
    src = shared_path("hippocampus", "labelsTr")
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for n in ("hippocampus_001", "hippocampus_003"):
        shutil.copy(src / f"{n}.nii.gz", ref / f"{n}.nii.gz")
    rows = _run(pred, ref, tmp_path / "o", "--labels", "1,2", rc=1)
    assert {r["status"] for r in rows} == {"error:missing_pred"}
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["labels"]["1"]["dice"]["mean"] == 0.0 and summary["labels"]["1"]["dice"]["n"] == 2


def test_cli_workers_identical(cohort, tmp_path):
    pred, ref = cohort
    _run(pred, ref, tmp_path / "w1", rc=1)
    _run(pred, ref, tmp_path / "w2", "--workers", "2", rc=1)
    assert (tmp_path / "w1" / "metrics.csv").read_bytes() == (tmp_path / "w2" / "metrics.csv").read_bytes()


def test_cli_bad_arguments(tmp_path):
    # usage errors (a missing input, values that cannot work): exit 2, nothing written
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert main(["evaluate", "--pred", str(tmp_path), "--ref", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--nsd-tolerance-mm", "1,2", "--no-progress"]) == 2
    assert not (tmp_path / "o").exists()


def test_cli_totalsegmentator_pair_agrees_with_surface_distance(tmp_path):
    d = shared_path("totalsegmentator")
    rows = _run(d / "example_seg_fast.nii.gz", d / "example_seg.nii.gz", tmp_path / "ts", "--nsd-tolerance-mm", "3")
    ref = read_volume(d / "example_seg.nii.gz", is_label=True)
    pred = read_volume(d / "example_seg_fast.nii.gz", is_label=True)
    labels = sorted((set(np.unique(ref.array).tolist()) | set(np.unique(pred.array).tolist())) - {0})
    assert sorted({r["label"] for r in rows}) == labels
    sdp = _sd_pkg()
    n_ok = 0
    for r in rows:
        if r["status"] != "ok":
            assert r["status"] in ("pred_empty", "ref_empty")
            continue
        n_ok += 1
        sd = sdp.compute_surface_distances(ref.array == r["label"], pred.array == r["label"], ref.spacing_mm)
        assert abs(r["hd95_mm"] - sdp.compute_robust_hausdorff(sd, 95)) <= 1e-6
        assert abs(r["nsd"] - sdp.compute_surface_dice_at_tolerance(sd, 3.0)) <= 1e-6
    assert n_ok >= 30


def test_pipeline_stage(cohort, tmp_path):
    from medseg.pipeline import run_pipeline

    pred, ref = cohort
    cfg = {"output": str(tmp_path / "run"), "stages": [{"stage": "evaluate", "params": {
        "pred": str(pred), "ref": str(ref), "labels": [1, 2], "nsd_tolerance_mm": [1.0, 2.0], "workers": 1}}]}
    ctx = run_pipeline(cfg, base_dir=tmp_path)
    res = ctx.results["evaluate"]
    assert res["report"].endswith("report.html") and res["failed"]["hippocampus_006"] == "error:missing_pred"
    rows = read_metrics_csv(tmp_path / "run" / "evaluate" / "metrics.csv")
    assert {r["label"]: r["nsd_tolerance_mm"] for r in rows if r["status"] == "ok"} == {1: 1.0}


def test_cli_empty_reference_nan_convention(tmp_path):
    from tests.paths import SAMPLES

    ref = tmp_path / "ref"
    shutil.copytree(SAMPLES / "hippocampus" / "labels", ref)
    v = read_volume(ref / "hippocampus_001.nii.gz", is_label=True)
    write_volume(v.with_array(np.where(v.array == 2, 0, v.array)), ref / "hippocampus_001.nii.gz")  # no label 2
    pred = SAMPLES / "hippocampus" / "pred"
    rows = _run(pred, ref, tmp_path / "score", "--metrics", "dice,assd")
    r = next(x for x in rows if x["case"] == "hippocampus_001" and x["label"] == 2)
    assert r["status"] == "ref_empty" and r["dice"] == 0.0
    assert r["assd_mm"] == pytest.approx(_diag(ref / "hippocampus_001.nii.gz"))
    rows = _run(pred, ref, tmp_path / "nan", "--metrics", "dice,assd", "--empty-reference", "nan")
    r = next(x for x in rows if x["case"] == "hippocampus_001" and x["label"] == 2)
    assert r["status"] == "ref_empty" and np.isnan(r["dice"]) and np.isnan(r["assd_mm"])
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    s2 = summary["labels"]["2"]
    assert summary["meta"]["empty_reference"] == "nan" and "MONAI" in summary["meta"]["empty_reference_description"]
    assert s2["dice"]["n"] == 3 and s2["dice"]["n_left_out"] == 1 and s2["assd_mm"]["n_left_out"] == 1
    others = [x["dice"] for x in rows if x["label"] == 2 and x["case"] != "hippocampus_001"]
    assert s2["dice"]["mean"] == pytest.approx(np.mean(others))
