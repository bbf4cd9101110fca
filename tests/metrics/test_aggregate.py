"""Cohort summaries: statistics by hand, reproducible bootstrap, empty/failed counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.metrics.aggregate import bootstrap_ci, summarize_rows, summarize_values
from medseg.metrics.params import parse_label_names, parse_labels, parse_tolerances


def test_summary_values_by_hand():
    s = summarize_values([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5 and s["n"] == 4
    assert s["q1"] == 1.75 and s["q3"] == 3.25 and s["iqr"] == 1.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    lo, hi = s["ci95"]
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert summarize_values([])["n"] == 0


def test_bootstrap_reproducible_and_sensible(rng):
    x = rng.normal(10.0, 2.0, size=200)
    a, b = bootstrap_ci(x), bootstrap_ci(x)
    assert a == b
    se = x.std(ddof=1) / math.sqrt(x.size)
    # percentile bootstrap of the mean ~ mean +- 1.96 SE for a large normal sample
    assert a[0] == pytest.approx(x.mean() - 1.96 * se, abs=0.5 * se)
    assert a[1] == pytest.approx(x.mean() + 1.96 * se, abs=0.5 * se)
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_summarize_rows_counts_and_means():
    nan = float("nan")
    rows = [
        {"case": "a", "label": 1, "dice": 0.8, "iou": 0.6, "hd95_mm": 2.0, "nsd": 0.9, "status": "ok"},
        {"case": "b", "label": 1, "dice": 1.0, "iou": 1.0, "hd95_mm": 0.0, "nsd": 1.0, "status": "both_empty"},
        {"case": "c", "label": 1, "dice": 0.0, "iou": 0.0, "hd95_mm": 50.0, "nsd": 0.0, "status": "pred_empty"},
        {"case": "d", "label": 1, "dice": nan, "iou": nan, "hd95_mm": nan, "nsd": nan, "status": "error:truncated"},
    ]
    s = summarize_rows(rows, n_boot=100)["1"]
    assert (s["n_cases"], s["n_ok"], s["n_both_empty"], s["n_pred_empty"], s["n_ref_empty"], s["n_failed"]) == (
        4, 1, 1, 1, 0, 1)
    assert s["dice"]["n"] == 3
    assert s["dice"]["mean"] == pytest.approx(1.8 / 3)
    assert s["dice"]["mean_without_both_empty"] == pytest.approx(0.4)
    assert s["hd95_mm"]["mean_without_both_empty"] == pytest.approx(26.0)


def test_params_parsing():
    assert parse_labels(None) is None and parse_labels("2, 1") == [2, 1] and parse_labels([1, "3"]) == [1, 3]
    for bad in ("0", "1,1", "x"):
        with pytest.raises(ConfigError):
            parse_labels(bad)
    assert parse_label_names("a,b", [1, 2]) == {1: "a", 2: "b"}
    assert parse_label_names({"1": "liver"}, None) == {1: "liver"}
    with pytest.raises(ConfigError):
        parse_label_names("a,b", None)
    assert parse_tolerances("2", None) == 2.0
    assert parse_tolerances("1,2.5", [1, 2]) == {1: 1.0, 2: 2.5}
    assert parse_tolerances({1: 1, 2: 3}, None) == {1: 1.0, 2: 3.0}
    with pytest.raises(ConfigError):
        parse_tolerances("1,2", None)
    with pytest.raises(ConfigError):
        parse_tolerances("-1", None)
    np.testing.assert_equal(parse_tolerances(0, None), 0.0)
