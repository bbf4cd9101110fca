"""Slide-level evaluation: curves, AUC, threshold choice and confusion matrix by hand; the CLI lists
every slide it leaves out and refuses one-class input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.errors import InputError
from medseg.metrics.classification import roc_auc
from medseg.metrics.slide_eval import at_threshold, average_precision, choose_threshold, pr_curve, roc_curve

Y = [0, 0, 1, 0, 1, 1, 0, 1]
P = [0.1, 0.3, 0.35, 0.4, 0.6, 0.7, 0.7, 0.9]


def test_roc_pr_by_hand():
    fpr, tpr, thr = roc_curve(Y, P)
    # thresholds 0.9 | 0.7 (one pos, one neg tied) | 0.6 | 0.4 | 0.35 | 0.3 | 0.1 ; P = N = 4
    assert thr[1:].tolist() == [0.9, 0.7, 0.6, 0.4, 0.35, 0.3, 0.1]
    assert tpr.tolist() == [0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert fpr.tolist() == [0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0]
    # the trapezoid area under the curve is the Mann-Whitney AUC: pairs won 2 + 3 + 3.5 (a tie) + 4 of 16
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(roc_auc(Y, P)) == pytest.approx(12.5 / 16)
    precision, recall, _ = pr_curve(Y, P)
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.75, 0.6, 4 / 6, 4 / 7, 0.5])
    # AP = sum of recall steps times precision: 0.25*1 + 0.25*2/3 + 0.25*0.75 + 0.25*4/6
    assert average_precision(Y, P) == pytest.approx(0.25 * (1 + 2 / 3 + 0.75 + 4 / 6))


def test_threshold_metrics_and_choice_by_hand():
    t = at_threshold(Y, P, 0.5)  # predicted positive: 0.6, 0.7, 0.7, 0.9 -> tp 3, fp 1
    assert (t["tp"], t["fp"], t["tn"], t["fn"]) == (3, 1, 3, 1)
    assert t["confusion_matrix"] == [[3, 1], [1, 3]] and t["accuracy"] == 0.75
    assert t["sensitivity"] == 0.75 and t["specificity"] == 0.75 and t["precision"] == 0.75
    # Youden J per threshold: 0.25, 0.25, 0.5, 0.25, 0.5, 0.25, 0: first maximum at 0.6
    assert choose_threshold(Y, P, "youden") == 0.6
    assert choose_threshold(Y, P, "sens:1.0") == 0.35   # highest threshold with all positives found
    assert choose_threshold(Y, P, "spec:0.75") == 0.6   # lowest threshold keeping specificity >= 0.75


def test_one_class_is_a_clear_error():
    with pytest.raises(InputError, match="one class only"):
        roc_curve([1, 1, 1], [0.2, 0.5, 0.9])


def _write(path, text):
    path.write_text(text)
    return path


def test_cli_wsi_evaluate_lists_left_out_slides(tmp_path, capsys):
    pred = _write(tmp_path / "predictions.csv", "slide,probability,label,status,n_tiles,error\n"
                  + "".join(f"s{i},{p},x,ok,10,\n" for i, p in enumerate(P))
                  + "bad,,,error:unreadable,0,cannot read\nextra,0.5,x,ok,3,\n")
    labels = _write(tmp_path / "labels.csv", "slide_id,label\n" + "".join(f"s{i},{y}\n" for i, y in enumerate(Y))
                    + "bad,1\nnopred,0\n")
    rc = main(["wsi", "evaluate", "--pred", str(pred), "--labels", str(labels), "--output", str(tmp_path / "o")])
    assert rc == 1
    out = capsys.readouterr().out
    assert "AUC 0.7812" in out and "left out: bad: prediction failed (error:unreadable)" in out
    assert "nopred: labelled but no prediction" in out and "extra: predicted but not labelled" in out
    res = json.loads((tmp_path / "o" / "slide_metrics.json").read_text())
    assert res["test"]["n"] == 8 and res["test"]["at_threshold"]["confusion_matrix"] == [[3, 1], [1, 3]]
    lo, hi = res["test"]["auc_ci95"]
    assert lo <= res["test"]["auc"] <= hi
    for name in ("roc.png", "pr.png"):
        assert (tmp_path / "o" / name).stat().st_size > 5000
    assert (tmp_path / "o" / "confusion.csv").read_text().splitlines() == ["true\\predicted,0,1", "0,3,1", "1,1,3"]
    assert (tmp_path / "o" / "report.html").read_text().count("data:image/png;base64,") == 2


def test_cli_threshold_chosen_on_validation_split(tmp_path, capsys):
    # validation slides v*: Youden picks 0.6; the test slides are scored at that threshold
    pred = _write(tmp_path / "p.csv", "slide,probability,status\n"
                  + "".join(f"v{i},{p},ok\n" for i, p in enumerate(P))
                  + "t0,0.55,ok\nt1,0.65,ok\nt2,0.2,ok\nt3,0.8,ok\n")
    labels = _write(tmp_path / "l.csv", "slide,label,split\n"
                    + "".join(f"v{i},{y},val\n" for i, y in enumerate(Y))
                    + "t0,1,test\nt1,0,test\nt2,0,test\nt3,1,test\n")
    rc = main(["wsi", "evaluate", "--pred", str(pred), "--labels", str(labels), "--output", str(tmp_path / "o"),
               "--choose-threshold", "youden"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "slide_metrics.json").read_text())
    t = res["test"]["at_threshold"]
    assert t["threshold"] == 0.6 and res["test"]["n"] == 4
    assert (t["tp"], t["fp"], t["tn"], t["fn"]) == (1, 1, 1, 1)  # t0 (0.55) missed, t1 (0.65) false positive


def test_cli_one_class_labels_exit_nonzero(tmp_path, caplog):
    pred = _write(tmp_path / "p.csv", "slide,probability,status\na,0.2,ok\nb,0.9,ok\n")
    labels = _write(tmp_path / "l.csv", "a,1\nb,1\n")
    assert main(["wsi", "evaluate", "--pred", str(pred), "--labels", str(labels), "--output", str(tmp_path / "o")]) != 0
    assert "one class only" in caplog.text
