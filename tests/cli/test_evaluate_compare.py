"""``medseg evaluate --pred A --pred B --ref R``: paired comparison on the hippocampus samples."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import wilcoxon

from medseg.cli.main import main
from medseg.io import read_volume, write_volume
from medseg.report.writers import read_metrics_csv
from tests.paths import SAMPLES

HIPPO = SAMPLES / "hippocampus"


def _second_method(tmp_path, drop=None):
    """Method B: each reference label grown by one voxel (label 1) or shrunk (label 2)."""
    out = tmp_path / "dilated"
    out.mkdir()
    for p in sorted((HIPPO / "labels").glob("*.nii.gz")):
        if drop and p.name.startswith(drop):
            continue
        v = read_volume(p, is_label=True)
        a = v.array.copy()
        a[ndimage.binary_dilation(a == 1) & (a == 0)] = 1
        a[(v.array == 2) & ~ndimage.binary_erosion(v.array == 2)] = 0
        write_volume(v.with_array(a), out / p.name)
    return out


def _comparison_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_paired_comparison_p_values_equal_scipy(tmp_path):
    base = tmp_path / "pred"
    shutil.copytree(HIPPO / "pred", base)
    other = _second_method(tmp_path)
    out = tmp_path / "cmp"
    rc = main(["evaluate", "--pred", str(base), "--pred", str(other), "--ref", str(HIPPO / "labels"),
               "--out", str(out), "--no-progress", "--metrics", "dice,hd95,assd"])
    assert rc == 0
    a = read_metrics_csv(out / "pred" / "metrics.csv")
    b = read_metrics_csv(out / "dilated" / "metrics.csv")
    rows = _comparison_rows(out / "comparison.csv")
    assert {(r["label"], r["metric"]) for r in rows} == {(lab, m) for lab in ("1", "2")
                                                          for m in ("dice", "hd95_mm", "assd_mm")}
    for r in rows:
        va = {x["case"]: x[r["metric"]] for x in a if str(x["label"]) == r["label"]}
        vb = {x["case"]: x[r["metric"]] for x in b if str(x["label"]) == r["label"]}
        d = np.array([vb[c] - va[c] for c in sorted(va)])
        assert int(r["n"]) == 4 and float(r["mean_diff"]) == pytest.approx(d.mean())
        expected = wilcoxon(d).pvalue if np.any(d != 0) else float("nan")
        np.testing.assert_equal(float(r["wilcoxon_p"]), expected)
    for m in ("dice", "hd95_mm"):  # Holm over the two labels
        ps = sorted(float(r["wilcoxon_p"]) for r in rows if r["metric"] == m)
        holm = sorted(float(r["holm_p"]) for r in rows if r["metric"] == m)
        assert holm == pytest.approx([min(1, 2 * ps[0]), min(1, max(2 * ps[0], ps[1]))])
    assert (out / "paired_dilated_dice.png").stat().st_size > 1000
    html = (out / "comparison.html").read_text()
    assert "data:image/png;base64," in html and "pred/report.html" in html


def test_different_case_sets_are_listed_and_exit_1(tmp_path, capsys):
    other = _second_method(tmp_path, drop="hippocampus_004")
    out = tmp_path / "cmp"
    rc = main(["evaluate", "--pred", str(HIPPO / "pred"), "--pred", str(other), "--ref", str(HIPPO / "labels"),
               "--out", str(out), "--no-progress", "--method-names", "sample,grown"])
    assert rc == 1
    printed = capsys.readouterr().out
    assert "left out of the paired statistics: hippocampus_004 (grown: error:missing_pred)" in printed
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["comparisons"][0]["excluded"] == {"hippocampus_004": "grown: error:missing_pred"}
    assert all(int(r["n"]) == 3 for r in _comparison_rows(out / "comparison.csv"))
    assert "hippocampus_004" in (out / "comparison.html").read_text()
