"""Overlap metrics (Dice, IoU) from voxel counts: the one Dice of medseg.

:func:`dice_from_counts` is the formula; :func:`dice_per_label` (label maps, used by validation
during training) and :func:`mask_dice` (two boolean masks, used by post-processing choice) count
voxels and call it. Convention everywhere: a label absent from both maps (two empty masks) scores
1.0, a label in only one of them 0.0.

Example
-------
>>> dice_from_counts(n_ref=4, n_pred=4, n_both=2), iou_from_counts(n_ref=4, n_pred=4, n_both=2)
(0.5, 0.3333333333333333)
"""

from __future__ import annotations

from collections.abc import Sequence

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


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice ``2|P & R| / (|P| + |R|)`` of each label of two label maps; 1.0 when the label is absent
    from both.

    >>> dice_per_label(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [1, 2, 3])
    {1: 0.6666666666666666, 2: 0.6666666666666666, 3: 1.0}
    """
    counts = label_counts(np.asarray(ref), np.asarray(pred), list(labels))
    return {int(lab): float(dice_from_counts(n_ref=int(c[0]), n_pred=int(c[1]), n_both=int(c[2])))
            for lab, c in zip(labels, counts)}


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty.

    >>> mask_dice(np.array([1, 1, 0], bool), np.array([0, 1, 0], bool))
    0.6666666666666666
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    return dice_from_counts(n_ref=int(np.count_nonzero(ref)), n_pred=int(np.count_nonzero(pred)),
                            n_both=int(np.count_nonzero(pred & ref)))
