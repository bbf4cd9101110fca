"""Hostile case ids, label names and slide fields never reach a CSV report as a live formula (OWASP)."""

from __future__ import annotations

import csv

import numpy as np

from medseg.csvsafe import csv_text, csv_untext
from tests.inference.helpers import oblique_lps_affine, save_nifti

HOSTILE = ["=1+2", "+SUM(A1:A2)", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "=HYPERLINK(\"http://x\";\"y\")",
           "=cmd|' /C calc'!A0", "'=already quoted"]


def test_cells_by_hand():
    assert csv_text("=1+2") == "'=1+2"
    assert csv_text("-x") == "'-x" and csv_text("@x") == "'@x" and csv_text("\tx") == "'\tx"
    assert csv_text("'a") == "''a"                    # a leading quote is escaped too: reading back is exact
    assert csv_text("\rCR") == "' CR" and csv_text("a\nb") == "a b"  # no line break inside a cell
    assert csv_text("case_1") == "case_1" and csv_text("") == ""
    assert csv_text(-0.5) == -0.5 and csv_text(3) == 3  # numbers stay numbers
    for s in [h for h in HOSTILE if "\r" not in h] + ["plain", "'", "''x"]:
        assert csv_untext(csv_text(s)) == s


def _is_number(c: str) -> bool:
    try:
        float(c)
        return True
    except ValueError:
        return False


def _formula_cells(path):
    """Cells a spreadsheet would take as a formula (a plain number such as -0.5 is not one)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row
                if c[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(c)]


def test_evaluate_metrics_csv_neutralises_hostile_case_ids_and_label_names(tmp_path):
    from medseg.report.evaluation import run_evaluation
    from medseg.report.writers import read_metrics_csv

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    lab = np.zeros((8, 9, 7), np.uint8)
    lab[2:6, 3:7, 2:5] = 1
    names = [n for n in HOSTILE if "/" not in n]
    for n in names:
        save_nifti(lab, ref / f"{n}.nii.gz", oblique_lps_affine())
        save_nifti(lab, pred / f"{n}.nii.gz", oblique_lps_affine())
    result, paths = run_evaluation(pred, ref, tmp_path / "ev", labels=[1], label_names={1: "=2*3"}, progress=False)
    # case names are sanitised as predict names its outputs (issue 13): no formula can survive in them
    from medseg.fsutil import unique_names

    assert sorted(result.cases) == sorted(unique_names(names)) and not result.failed
    assert all(c[0].isalnum() for c in result.cases)
    assert _formula_cells(paths["metrics_csv"]) == []
    text = paths["metrics_csv"].read_text("utf-8")
    assert ",'=2*3," in text
    rows = read_metrics_csv(paths["metrics_csv"])
    assert sorted(r["case"] for r in rows) == sorted(result.cases)  # read back
    assert {r["label_name"] for r in rows} == {"=2*3"} and {r["dice"] for r in rows} == {1.0}


def test_wsi_predictions_csv_neutralises_text_cells(tmp_path):
    from medseg.wsi.predict import write_predictions_csv

    rows = [{"slide": "s1", "probability": -0.0, "label": "=evil()", "status": "ok", "n_tiles": 3},
            {"slide": "@s2", "probability": "", "label": "", "status": "error:bad_input",
             "error": "-cannot read +tile", "n_tiles": 0}]
    p = write_predictions_csv(rows, tmp_path / "predictions.csv")
    assert _formula_cells(p) == []
    got = list(csv.DictReader(p.open(newline="")))
    assert got[0]["label"] == "'=evil()" and got[0]["probability"] == "-0.0"  # numbers untouched
    assert got[1]["slide"] == "'@s2" and got[1]["error"] == "'-cannot read +tile"


def test_training_curves_csv_neutralises_text(tmp_path):
    from medseg.training.curves import write_csv

    p = write_csv([{"epoch": 1, "loss": -0.25, "note": "=1"}], tmp_path / "curves.csv")
    assert p.read_text() == "epoch,loss,note\n1,-0.25,'=1\n"
