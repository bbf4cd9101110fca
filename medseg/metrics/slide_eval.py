"""Slide-level (binary) evaluation: ROC and precision-recall curves, AUC with a bootstrap CI,
accuracy / sensitivity / specificity / precision and the confusion matrix at a threshold that is
given or chosen on a validation split.

Definitions (positive class 1, prediction positive when ``probability >= threshold``):

* ROC: for every distinct probability as threshold (highest first), ``TPR = TP / P`` against
  ``FPR = FP / N``, from (0, 0) to (1, 1); AUC = Mann-Whitney U / (P N), ties counted half
  (:func:`medseg.metrics.classification.roc_auc`, equal to the trapezoid area under this curve).
* PR: precision ``TP / (TP + FP)`` against recall ``TP / P`` at the same thresholds; average
  precision ``AP = Σ (R_k - R_{k-1}) P_k`` (step-wise, no interpolation).
* Threshold choice on validation slides: ``youden`` maximises ``sensitivity + specificity - 1``;
  ``sens:0.9`` is the highest threshold whose sensitivity is >= 0.9 (``spec:0.9`` likewise the
  lowest threshold whose specificity is >= 0.9).

Example
-------
>>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
>>> fpr.tolist(), tpr.tolist()
([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.metrics.classification import bootstrap_ci, roc_auc


def _check(y_true, prob, *, what: str = "slides") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if not np.all(np.isfinite(p)):
        raise InputError(f"the {what} hold non-finite probabilities", code="bad_values")
    present = sorted(set(y.tolist()))
    if present != [0, 1]:
        only = present[0] if present else "none"
        raise InputError(f"the {len(y)} {what} hold one class only (class {only}): ROC, AUC, sensitivity and "
                         "specificity need both negative (0) and positive (1) slides", code="one_class")
    return y, p


def _counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), ys.size - 1]  # last index of each distinct threshold
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(1 - ys)[last]
    return tp, fp, ps[last]


def roc_curve(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` starting at (0, 0) (threshold ``inf``)."""
    y, p = _check(y_true, prob)
    tp, fp, thr = _counts(y, p)
    return (np.r_[0.0, fp / (y == 0).sum()], np.r_[0.0, tp / (y == 1).sum()], np.r_[np.inf, thr])


def pr_curve(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)``, one point per distinct probability (highest first)."""
    y, p = _check(y_true, prob)
    tp, fp, thr = _counts(y, p)
    return tp / (tp + fp), tp / (y == 1).sum(), thr


def average_precision(y_true, prob) -> float:
    precision, recall, _ = pr_curve(y_true, prob)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def at_threshold(y_true, prob, threshold: float) -> dict[str, Any]:
    """Confusion matrix and rates at ``threshold`` (positive when ``prob >= threshold``)."""
    y, p = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    tp = int(((y == 1) & (pred == 1)).sum())
    tn = int(((y == 0) & (pred == 0)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {"threshold": float(threshold), "n": int(y.size), "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "accuracy": ratio(tp + tn, y.size), "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "precision": ratio(tp, tp + fp), "confusion_matrix": [[tn, fp], [fn, tp]]}


def choose_threshold(y_true, prob, rule: str) -> float:
    """Threshold from validation slides: ``youden``, ``sens:X`` or ``spec:X`` (see module doc)."""
    y, p = _check(y_true, prob, what="validation slides")
    fpr, tpr, thr = roc_curve(y, p)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # real thresholds only
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    kind, _, value = rule.partition(":")
    try:
        target = float(value)
    except ValueError:
        target = math.nan
    if kind not in ("sens", "spec") or not 0.0 <= target <= 1.0:
        from medseg.errors import ConfigError

        raise ConfigError(f"threshold rule '{rule}': use youden, sens:0.9 or spec:0.9", code="bad_params")
    if kind == "sens":
        return float(thr[int(np.flatnonzero(tpr >= target)[0])])
    ok = np.flatnonzero(1.0 - fpr >= target)
    return float(thr[int(ok[-1])]) if ok.size else float(thr[0])


def evaluate_slides(y_true: Sequence[int], prob: Sequence[float], *, threshold: float, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """AUC with percentile-bootstrap 95% CI, AP, curves and the metrics at ``threshold``."""
    y, p = _check(y_true, prob)
    auc, lo, hi = bootstrap_ci(y, p, roc_auc, n_boot=n_boot, seed=seed)
    fpr, tpr, roc_thr = roc_curve(y, p)
    precision, recall, pr_thr = pr_curve(y, p)
    return {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int((y == 0).sum()),
            "auc": auc, "auc_ci95": [lo, hi], "average_precision": average_precision(y, p),
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": roc_thr.tolist()},
            "pr": {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": pr_thr.tolist()},
            "at_threshold": at_threshold(y, p, threshold), "n_boot": n_boot, "seed": seed}
