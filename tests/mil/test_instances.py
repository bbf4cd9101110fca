"""Instance AUC of the attention weights (medseg.mil.instances)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.mil import instances
from medseg.mil.bags import Bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import MILTrainConfig


def test_instance_auc_by_hand(monkeypatch):
    # positive bag A: weights (0.5, 0.25, 0.25), labels (1, 0, 0) -> relative 1.5, 0.75, 0.75
    # positive bag B: weights (0.6, 0.4), labels (0, 1) -> relative 1.2, 0.8; negative bag C ignored
    # positives {1.5, 0.8} vs negatives {0.75, 0.75, 1.2}: 3 + 2 of 6 pairs ranked right -> 5/6
    weights = {3: np.array([0.5, 0.25, 0.25]), 2: np.array([0.6, 0.4]), 4: np.full(4, 0.25)}
    monkeypatch.setattr(instances, "attention_weights", lambda ens, f: weights[len(f)])
    bags = Bags([np.zeros((3, 1)), np.zeros((2, 1)), np.zeros((4, 1))], np.array([1, 1, 0]), ["a", "b", "c"],
                [np.array([1, 0, 0]), np.array([0, 1]), np.zeros(4, int)])
    assert instances.instance_auc(None, bags) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no instance labels"):
        instances.instance_auc(None, Bags(bags.features, bags.labels, bags.ids))


def test_cv_reports_instance_auc(rng):
    feats, labels, inst = [], [], []
    for b in range(30):
        n = int(rng.integers(3, 8))
        x = rng.normal(size=(n, 4)).astype(np.float32)
        lab = np.zeros(n, int)
        if b % 2:
            k = int(rng.integers(n))
            x[k, 0] += 6.0
            lab[k] = 1
        feats.append(x); labels.append(b % 2); inst.append(lab)
    bags = Bags(feats, np.array(labels), [str(i) for i in range(30)], inst)
    s = cross_validate(bags, MILTrainConfig(model="attention_mil", epochs=15), folds=3, seed=0)
    assert all("instance_auc" in p for p in s["per_fold"])
    assert s["instance_auc_mean"] > 0.9  # the witness instance gets the attention
