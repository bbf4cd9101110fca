"""Overlap metrics (Dice, IoU) from voxel counts.

Example
-------
>>> dice_from_counts(n_ref=4, n_pred=4, n_both=2), iou_from_counts(n_ref=4, n_pred=4, n_both=2)
(0.5, 0.3333333333333333)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def dice_from_counts(*, n_ref: int, n_pred: int, n_both: int) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    total = n_ref + n_pred
    return 1.0 if total == 0 else 2.0 * n_both / total


def iou_from_counts(*, n_ref: int, n_pred: int, n_both: int) -> float:
    """|A∩B| / |A∪B|; 1.0 when both masks are empty."""
    union = n_ref + n_pred - n_both
    return 1.0 if union == 0 else n_both / union


def label_counts(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Voxel counts per label in one pass over the volume.

    Parameters
    ----------
    ref, pred : integer label maps of equal shape (values >= 0)
    labels : label values to count

    Returns
    -------
    (len(labels), 3) int64: columns ``n_ref, n_pred, n_both``.
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {ref.shape} vs {pred.shape}")
    top = int(max(ref.max(initial=0), pred.max(initial=0), max(labels, default=0))) + 1
    if top * top > 2**24:  # huge label values: count per label instead of one joint histogram
        out = [((ref == k).sum(), (pred == k).sum(), ((ref == k) & (pred == k)).sum()) for k in labels]
        return np.asarray(out, dtype=np.int64).reshape(len(labels), 3)
    joint = np.bincount((pred.astype(np.int64) * top + ref).ravel(), minlength=top * top).reshape(top, top)
    idx = np.asarray(list(labels), dtype=np.int64)
    return np.stack([joint[:, idx].sum(axis=0), joint[idx, :].sum(axis=1), joint[idx, idx]], axis=1)
