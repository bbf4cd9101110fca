"""Paired comparison of two or more methods scored on the same cases.

For every method after the first (the baseline) and every label and metric: the per-case
differences ``d = method - baseline`` over the cases scored in both, their mean with a percentile
bootstrap 95% CI (:func:`medseg.metrics.aggregate.bootstrap_ci`), the median, the Wilcoxon
signed-rank p-value (``scipy.stats.wilcoxon(d)``, two-sided, zero differences dropped as in its
default) and the Holm-adjusted p-value over the labels of that metric.

Cases that are not scored in both methods (a prediction missing in one folder, a failed case) are
left out of the paired statistics and *listed* (``excluded``), never dropped silently.

Example
-------
>>> holm([0.01, 0.04, 0.03])
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.metrics.aggregate import BOOTSTRAP_SEED, N_BOOT, bootstrap_ci


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; nan stays nan and is not counted)."""
    p = [float(v) for v in pvalues]
    idx = sorted((i for i, v in enumerate(p) if not math.isnan(v)), key=lambda i: p[i])
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (``scipy.stats.wilcoxon``);
    nan when there is no non-zero difference."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0 or not np.any(d != 0):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(d).pvalue)


def _scored(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    return {(str(r["case"]), int(r["label"])): r for r in rows}


def paired_comparison(methods: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Sequence[str], *,
                      n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Compare every method with the first one.

    Parameters
    ----------
    methods : name -> rows of its evaluation (dicts with case, label, status and the metric columns),
        in order; the first is the baseline
    metrics : metric columns to compare

    Returns
    -------
    ``{"baseline", "comparisons": [{"method", "excluded": {case: reason}, "n_paired_cases",
    "results": [{"label", "metric", "n", "mean_baseline", "mean_method", "mean_diff", "ci95",
    "median_diff", "wilcoxon_p", "holm_p"}], "per_case": {label: {metric: [(case, a, b)]}}}]}``
    """
    names = list(methods)
    if len(names) < 2:
        raise ValueError("a paired comparison needs at least two methods")
    base_name = names[0]
    base = _scored(methods[base_name])
    comparisons = []
    for name in names[1:]:
        other = _scored(methods[name])
        cases_a = {c for c, _ in base}
        cases_b = {c for c, _ in other}
        excluded: dict[str, str] = {}
        for c in sorted(cases_a - cases_b):
            excluded[c] = f"no case in {name}"
        for c in sorted(cases_b - cases_a):
            excluded[c] = f"no case in {base_name}"
        for (c, _k), r in sorted(base.items()):
            if str(r["status"]).startswith("error") and c not in excluded:
                excluded[c] = f"{base_name}: {r['status']}"
        for (c, _k), r in sorted(other.items()):
            if str(r["status"]).startswith("error") and c not in excluded:
                excluded[c] = f"{name}: {r['status']}"
        labels = sorted({k for _, k in base} | {k for _, k in other})
        results: list[dict[str, Any]] = []
        per_case: dict[str, dict[str, list[tuple[str, float, float]]]] = {}
        for m in metrics:
            block: list[dict[str, Any]] = []
            for k in labels:
                trip = []
                for c in sorted(cases_a & cases_b):
                    if c in excluded or (c, k) not in base or (c, k) not in other:
                        continue
                    a, b = float(base[(c, k)][m]), float(other[(c, k)][m])
                    if not (math.isnan(a) or math.isnan(b)):
                        trip.append((c, a, b))
                per_case.setdefault(str(k), {})[m] = trip
                d = np.array([b - a for _, a, b in trip])
                lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
                block.append({
                    "label": k, "metric": m, "n": int(d.size),
                    "mean_baseline": float(np.mean([a for _, a, _ in trip])) if trip else math.nan,
                    "mean_method": float(np.mean([b for _, _, b in trip])) if trip else math.nan,
                    "mean_diff": float(d.mean()) if d.size else math.nan, "ci95": [lo, hi],
                    "median_diff": float(np.median(d)) if d.size else math.nan,
                    "wilcoxon_p": wilcoxon_p(d),
                })
            for entry, adj in zip(block, holm([float(e["wilcoxon_p"]) for e in block])):
                entry["holm_p"] = adj
            results.extend(block)
        comparisons.append({"method": name, "excluded": excluded,
                            "n_paired_cases": len((cases_a & cases_b) - set(excluded)),
                            "results": results, "per_case": per_case})
    return {"baseline": base_name, "methods": names, "comparisons": comparisons}
