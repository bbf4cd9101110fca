"""One Dice (medseg.metrics.overlap) behind validation during training, post-processing choice and
evaluation: the callers give the same numbers, with the same conventions for empty masks."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics import overlap
from medseg.metrics.evaluate import evaluate_arrays
from medseg.postprocess import dice, mean_dice
from medseg.training.validate import dice_per_label


def test_callers_use_the_metrics_dice():
    assert dice is overlap.mask_dice
    assert dice_per_label is overlap.dice_per_label


@pytest.mark.parametrize("seed", range(4))
def test_label_map_and_mask_dice_agree_with_evaluation(seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, (7, 6, 5))
    ref = rng.integers(0, 4, (7, 6, 5))
    pred[pred == 3] = 0                      # label 3: only in the reference -> 0.0
    labels = [1, 2, 3, 4]                    # label 4: in neither -> 1.0
    per = dice_per_label(pred, ref, labels)
    rows = {r.label: r.dice for r in evaluate_arrays(pred, ref, spacing_mm=(1.0, 1.0, 1.0), labels=labels)}
    for k in labels:
        by_mask = dice(pred == k, ref == k)
        n_p, n_r, n_b = int((pred == k).sum()), int((ref == k).sum()), int(((pred == k) & (ref == k)).sum())
        by_hand = 1.0 if n_p + n_r == 0 else 2.0 * n_b / (n_p + n_r)
        assert per[k] == by_mask == rows[k] == by_hand          # bit-equal, not approximately
    assert per[3] == 0.0 and per[4] == 1.0


def test_empty_mask_conventions_of_each_caller():
    empty, full = np.zeros((2, 3), np.uint8), np.ones((2, 3), np.uint8)
    # validation during training: a label absent from prediction and reference counts 1.0
    assert dice_per_label(empty, empty, [1]) == {1: 1.0}
    assert dice_per_label(full, empty, [1]) == {1: 0.0}
    # post-processing choice: both masks empty -> 1.0 (the case counts in the mean), one empty -> 0.0
    assert dice(empty > 0, empty > 0) == 1.0 and dice(full > 0, empty > 0) == 0.0
    assert mean_dice([empty, full], [empty, empty], 1) == 0.5
