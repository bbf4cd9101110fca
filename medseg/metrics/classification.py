"""Binary classification metrics for slides and bags, and confidence intervals over folds.

All functions take plain arrays: ``y_true`` in {0, 1}, ``prob`` in [0, 1].

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> t_interval([0.8, 0.9, 1.0])  # doctest: +ELLIPSIS
(0.9, 0.6515..., 1.1484...)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["roc_auc", "accuracy", "balanced_accuracy", "f1_score", "binary_metrics", "t_interval",
           "bootstrap_ci"]


def _arrays(y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    return y, p


def roc_auc(y_true, prob) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); NaN with one class only."""
    y, p = _arrays(y_true, prob)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(p)  # average ranks for ties
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(y_true, pred) -> float:
    y, p = _arrays(y_true, pred)
    return float((y == p.astype(int)).mean()) if y.size else float("nan")


def balanced_accuracy(y_true, pred) -> float:
    """Mean of sensitivity and specificity (over the classes present)."""
    y, p = _arrays(y_true, pred)
    p = p.astype(int)
    recalls = [float((p[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def f1_score(y_true, pred) -> float:
    """F1 of the positive class; 0 when there are no true and no predicted positives' overlap."""
    y, p = _arrays(y_true, pred)
    p = p.astype(int)
    tp = int(((y == 1) & (p == 1)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def binary_metrics(y_true, prob, *, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, balanced accuracy and F1 at ``threshold``."""
    y, p = _arrays(y_true, prob)
    pred = (p >= threshold).astype(int)
    return {"auc": roc_auc(y, p), "accuracy": accuracy(y, pred),
            "balanced_accuracy": balanced_accuracy(y, pred), "f1": f1_score(y, pred)}


def t_interval(values: Sequence[float], *, confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean over ``values`` (NaNs dropped).

    Folds of repeated cross-validation are not independent, so this interval is optimistic;
    it is reported as the usual summary in the MIL literature. ``bounds``: the metric's range (e.g.
    ``(0, 1)`` for accuracy or AUC); the interval is clipped to it (a symmetric t-interval around a
    mean near 1 would otherwise pass 1).

    >>> t_interval([0.9, 1.0, 1.0], bounds=(0, 1))[2]
    1.0
    """
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, float(bounds[0])), min(hi, float(bounds[1]))
    return m, lo, hi


def bootstrap_ci(y_true, prob, metric, *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Point value and percentile-bootstrap interval of ``metric(y_true, prob)`` over resampled cases."""
    y, p = _arrays(y_true, prob)
    rng = np.random.default_rng(seed)
    point = float(metric(y, p))
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        v = metric(y[i], p[i])
        if not math.isnan(v):
            vals.append(v)
    if not vals:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - confidence) / 2, (1 + confidence) / 2])
    return point, float(lo), float(hi)
