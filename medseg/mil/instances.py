"""Instance-level check of a MIL aggregator where the data has instance labels (Andrews-style
``.mat`` files, digit bags): does the attention find the positive instances?

The attention weights of a bag sum to 1, so bags of different sizes are put on one scale by
*relative attention* ``a_k * n`` (1 = the uniform weight). The **instance AUC** is the ROC AUC of
the instance labels against the relative attention, pooled over the instances of the *positive*
bags (negative bags hold no positive instance; a bag's attention only ranks instances within a
bag); NaN when those instances are all of one class.

>>> relative_attention(np.array([0.5, 0.25, 0.25]))
array([1.5 , 0.75, 0.75])
"""

from __future__ import annotations

import numpy as np

from medseg.metrics.classification import roc_auc
from medseg.mil.bags import Bags
from medseg.mil.fit import MILEnsemble, attention_weights

__all__ = ["relative_attention", "instance_auc"]


def relative_attention(weights: np.ndarray) -> np.ndarray:
    """Attention weights of one bag times its size."""
    w = np.asarray(weights, dtype=float)
    return w * len(w)


def instance_auc(ens: MILEnsemble, bags: Bags) -> float:
    """Instance AUC of ``ens``'s attention on the positive bags of ``bags`` (needs instance labels)."""
    if bags.instance_labels is None:
        raise ValueError("these bags have no instance labels")
    ys, scores = [], []
    for f, y, inst in zip(bags.features, bags.labels, bags.instance_labels):
        if y == 1:
            ys.append(np.asarray(inst))
            scores.append(relative_attention(attention_weights(ens, f)))
    if not ys:
        return float("nan")
    return roc_auc(np.concatenate(ys), np.concatenate(scores))
