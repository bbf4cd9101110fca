"""Paired comparison: Holm by hand, Wilcoxon equal to scipy, cases not scored in both listed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from medseg.metrics.paired import holm, paired_comparison, wilcoxon_p


def test_holm_by_hand():
    # sorted 0.005, 0.02, 0.04, 0.3 with m = 4: 4*0.005, 3*0.02, max(0.06, 2*0.04), max(0.08, 0.3)
    assert holm([0.04, 0.005, 0.3, 0.02]) == pytest.approx([0.08, 0.02, 0.3, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    got = holm([0.01, math.nan, 0.02])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (5, 12, 40):
        d = rng.normal(0.02, 0.05, n)
        assert wilcoxon_p(d) == wilcoxon(d).pvalue
    assert math.isnan(wilcoxon_p([0.0, 0.0])) and math.isnan(wilcoxon_p([]))


def _rows(values, status=None):
    status = status or {}
    return [{"case": c, "label": 1, "status": status.get(c, "ok"), "dice": v} for c, v in values.items()]


def test_paired_comparison_lists_cases_not_scored_in_both():
    a = _rows({"c1": 0.80, "c2": 0.70, "c3": 0.90, "c4": 0.60, "c5": 0.50, "c6": 0.4})
    b = _rows({"c1": 0.85, "c2": 0.78, "c3": 0.88, "c4": 0.70, "c6": 0.0, "c7": 0.9},
              status={"c6": "error:missing_pred"})
    out = paired_comparison({"A": a, "B": b}, ["dice"], n_boot=200)
    (comp,) = out["comparisons"]
    assert comp["excluded"] == {"c5": "no case in B", "c7": "no case in A", "c6": "B: error:missing_pred"}
    (r,) = comp["results"]
    d = np.array([0.05, 0.08, -0.02, 0.10])
    assert r["n"] == 4 and r["mean_diff"] == pytest.approx(d.mean())
    assert r["wilcoxon_p"] == wilcoxon(d).pvalue and r["holm_p"] == r["wilcoxon_p"]
    assert r["ci95"][0] <= r["mean_diff"] <= r["ci95"][1]
