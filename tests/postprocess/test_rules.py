"""apply_postprocess / choose_postprocess on hand-worked label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.postprocess import apply_postprocess, choose_postprocess, dice, mean_dice


def test_dice_by_hand():
    a = np.array([1, 1, 1, 0], bool)
    b = np.array([0, 1, 1, 1], bool)
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(a, np.zeros(4, bool)) == 0.0


def test_apply_per_label_and_foreground():
    lm = np.array([
        [1, 1, 0, 0, 2, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 2],
    ], dtype=np.uint8)
    out = apply_postprocess(lm, (1.0, 1.0), {1: [{"op": "keep_largest"}]})
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 1, 0, 0, 2, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2]]
    # foreground = all labels as one mask: the largest blob is the 2x2 label-1 square
    fg = apply_postprocess(lm, (1.0, 1.0), {"foreground": [{"op": "keep_largest"}]})
    assert fg.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    # JSON turns keys into strings; they still work
    rules = json.loads(json.dumps({2: [{"op": "remove_small", "min_volume_mm3": 2.0}]}))
    assert apply_postprocess(lm, (1.0, 2.0), rules).tolist() == lm.tolist()  # each 1-voxel blob is 2 mm3
    assert (apply_postprocess(lm, (1.0, 1.0), rules) == 2).sum() == 0


def test_fill_takes_background_only():
    lm = np.zeros((5, 5), np.int16)
    lm[0:5, 0:5] = 1
    lm[2, 2] = 3   # a different label inside the ring stays
    lm[1, 3] = 0   # background hole fills
    out = apply_postprocess(lm, (1.0, 1.0), {1: [{"op": "fill_holes"}, {"op": "closing", "radius_mm": 1.0}]})
    assert out[2, 2] == 3 and out[1, 3] == 1 and (out == 1).sum() == 24


def test_bad_rules():
    lm = np.zeros((3, 3), int)
    for rules in ({1: [{"op": "dilate"}]}, {1: [{"op": "opening"}]}, {1: [{"op": "opening", "radius_mm": 1, "x": 2}]},
                  {0: [{"op": "keep_largest"}]}, {"liver": []}, {1: {"op": "keep_largest"}},
                  {"foreground": [{"op": "fill_holes"}]}):
        with pytest.raises(ConfigError):
            apply_postprocess(lm, (1.0, 1.0), rules)
    with pytest.raises(ConfigError, match="spacing_mm"):
        apply_postprocess(lm, (1.0,), {})


def _case(spurious: bool):
    """Label 1: a 3x3 block (pred adds a spurious voxel if asked). Label 2: two true blobs, both predicted."""
    ref = np.zeros((8, 8), np.uint8)
    ref[1:4, 1:4] = 1
    ref[6, 0:3] = 2
    ref[6, 6:8] = 2
    pred = ref.copy()
    if spurious:
        pred[0, 7] = 1
    return pred, ref


def test_choose_keeps_only_helpful_ops():
    cases = [_case(True), _case(True), _case(False)]
    preds, refs = [c[0] for c in cases], [c[1] for c in cases]
    ops = [{"op": "keep_largest"}, {"op": "closing", "radius_mm": 1.0}]
    rules = choose_postprocess(preds, refs, (1.0, 1.0), ops)
    # label 1: keep_largest removes the spurious voxel (Dice 18/19 -> 1); closing changes nothing (not kept)
    # label 2: keep_largest would drop a true blob (worse); closing would bridge the two blobs (worse)
    assert rules == {1: [{"op": "keep_largest"}]}
    before = mean_dice(preds, refs, 1)
    assert before == pytest.approx((2 * (18 / 19) + 1) / 3)
    after = [apply_postprocess(p, (1.0, 1.0), rules) for p in preds]
    assert mean_dice(after, refs, 1) == 1.0 and mean_dice(after, refs, 2) == 1.0
    # foreground candidate: keep_largest over all labels would delete label 2 entirely
    assert choose_postprocess(preds, refs, (1.0, 1.0), {"foreground": [{"op": "keep_largest"}]}) == {}
    # a demanded improvement above what keep_largest gives (0.035) rejects it
    assert choose_postprocess(preds, refs, (1.0, 1.0), ops, min_improvement=0.05) == {}
    # per-case spacing and explicit labels
    assert choose_postprocess(preds, refs, [(1.0, 1.0)] * 3, ops, labels=[2]) == {}


def test_choose_errors():
    p, r = _case(False)
    with pytest.raises(ConfigError):
        choose_postprocess([p], [], (1.0, 1.0), [])
    with pytest.raises(ConfigError, match="shape"):
        choose_postprocess([p], [r[:4]], (1.0, 1.0), [])


def test_inplace_changes_the_given_map_to_the_same_result():
    """``inplace=True`` (the predictor's own label map, CT-sized) gives what the copying call gives,
    with removing (keep_largest) and adding (fill_holes) rules, by hand on a small map."""
    lm = np.zeros((1, 5, 6), np.uint8)
    lm[0, 0, :2] = 1                 # small piece of label 1
    lm[0, 2:5, 2:5] = 1              # large ring of label 1 around a hole at (3, 3)
    lm[0, 3, 3] = 0
    lm[0, 0, 5] = 2
    rules = {1: [{"op": "keep_largest"}, {"op": "fill_holes", "slice_axis": 0}], "foreground": [{"op": "keep_largest"}]}
    want = np.zeros_like(lm)
    want[0, 2:5, 2:5] = 1            # small piece gone, hole filled; label 2 lost to the foreground rule
    copied = apply_postprocess(lm, (1.0, 1.0, 1.0), rules)
    np.testing.assert_array_equal(copied, want)
    assert lm[0, 0, 0] == 1          # the copying call left the input alone
    same = apply_postprocess(lm, (1.0, 1.0, 1.0), rules, inplace=True)
    assert same is lm
    np.testing.assert_array_equal(lm, want)
