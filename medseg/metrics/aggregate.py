"""Cohort summaries per label: mean, std, median, IQR, bootstrap 95% CI, empty-case counts.

Every row with a number enters the statistics: ``ok`` rows, the empty cases with their fixed
conventional values, and failed / missing cases (``error:...`` status) with the worst values the
cohort gave them (``n_imputed``). A ``nan`` (a failed case under ``--exclude-failed``, an empty
reference under ``--empty-reference nan``, an undefined relative volume difference) is left out
and counted (``n_left_out``). The means are also given without the ``both_empty`` rows, which
otherwise pull means towards 1 (0 for HD95).

Example
-------
>>> s = summarize_values([1.0, 2.0, 3.0, 4.0], n_boot=200)
>>> s["mean"], s["median"], s["iqr"], s["n"]
(2.5, 2.5, 1.5, 4)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

METRICS = ("dice", "iou", "hd95_mm", "nsd")
BOOTSTRAP_SEED = 0
N_BOOT = 2000


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT, level: float = 0.95,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (fixed seed: reproducible).

    Returns ``(nan, nan)`` for no values; ``(v, v)`` for a single value.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // x.size)  # bound memory for large cohorts
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def summarize_values(values: Iterable[float], *, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """mean, std (sample, ddof=1), median, q1, q3, iqr, ci95 (bootstrap of the mean), n."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        nan = math.nan
        return {"mean": nan, "std": nan, "median": nan, "q1": nan, "q3": nan, "iqr": nan,
                "ci95": [nan, nan], "n": 0}
    q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "ci95": list(bootstrap_ci(x, n_boot=n_boot, seed=seed)),
        "n": int(x.size),
    }


def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def summarize_rows(rows: Sequence[dict[str, Any]], *, n_boot: int = N_BOOT,
                   metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Per-label summary of metric rows (dicts with ``label``, ``status`` and the ``metrics``).

    Returns ``{label: {"n_cases", "n_ok", "n_both_empty", "n_pred_empty", "n_ref_empty",
    "n_failed", METRIC: {stats..., "n_left_out", "n_imputed", "mean_without_both_empty"}}}`` with
    labels as strings (JSON keys).
    """
    by_label: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(int(r["label"]), []).append(r)
    out: dict[str, Any] = {}
    for label in sorted(by_label):
        lr = by_label[label]
        status = [str(r["status"]) for r in lr]
        failed = [r for r in lr if str(r["status"]).startswith("error")]
        not_both = [r for r in lr if r["status"] != "both_empty"]
        entry: dict[str, Any] = {
            "name": next((r.get("label_name") for r in lr if r.get("label_name")), None),
            "n_cases": len(lr),
            "n_ok": status.count("ok"),
            "n_both_empty": status.count("both_empty"),
            "n_pred_empty": status.count("pred_empty"),
            "n_ref_empty": status.count("ref_empty"),
            "n_failed": sum(s.startswith("error") for s in status),
        }
        for m in metrics:
            stats = summarize_values([float(r[m]) for r in lr if not _is_nan(r.get(m))], n_boot=n_boot)
            stats["n_left_out"] = sum(_is_nan(r.get(m)) for r in lr)
            stats["n_imputed"] = sum(not _is_nan(r.get(m)) for r in failed)
            stats["mean_with_both_empty"] = stats["mean"]
            vals = [float(r[m]) for r in not_both if not _is_nan(r.get(m))]
            stats["mean_without_both_empty"] = float(np.mean(vals)) if vals else math.nan
            entry[m] = stats
        out[str(label)] = entry
    return out
