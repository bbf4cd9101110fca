"""Hypothesis properties of Dice, IoU, HD95 and NSD on small random masks with anisotropic spacing."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.metrics.evaluate import evaluate_arrays

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAD = 3
spacings = st.tuples(*[st.floats(0.3, 3.0)] * 3)


@st.composite
def mask_pairs(draw):
    shape = draw(st.tuples(st.integers(2, 6), st.integers(2, 7), st.integers(2, 7)))
    a = draw(arrays(np.bool_, shape))
    b = draw(st.one_of(arrays(np.bool_, shape), st.just(a.copy())))
    assume(a.any() and b.any())
    return a, b


def _score(pred: np.ndarray, ref: np.ndarray, spacing, tol: float = 1.0):
    (r,) = evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=spacing, labels=[1],
                           tolerance_mm=tol)
    return r


def _pad(m: np.ndarray) -> np.ndarray:
    return np.pad(m, PAD)


@SETTINGS
@given(pair=mask_pairs(), spacing=spacings, tol=st.floats(0.1, 4.0))
def test_symmetry_and_bounds(pair, spacing, tol):
    a, b = pair
    ab, ba = _score(a, b, spacing, tol), _score(b, a, spacing, tol)
    for m in ("dice", "iou", "hd95_mm", "nsd"):
        assert getattr(ab, m) == np.float64(getattr(ba, m)) or np.isclose(getattr(ab, m), getattr(ba, m),
                                                                           rtol=1e-12, atol=1e-12), m
    assert 0.0 <= ab.dice <= 1.0 and 0.0 <= ab.iou <= 1.0 and 0.0 <= ab.nsd <= 1.0
    assert ab.hd95_mm >= 0.0
    assert np.isclose(ab.iou, ab.dice / (2.0 - ab.dice), rtol=1e-12, atol=1e-12)
    assert ab.iou <= ab.dice + 1e-15
    n_both = int(np.count_nonzero(a & b))
    assert np.isclose(ab.dice, 2 * n_both / (a.sum() + b.sum()))


@SETTINGS
@given(pair=mask_pairs(), spacing=spacings)
def test_identical_masks(pair, spacing):
    a, _ = pair
    r = _score(a, a.copy(), spacing)
    assert (r.dice, r.iou, r.hd95_mm, r.nsd) == (1.0, 1.0, 0.0, 1.0)


@SETTINGS
@given(pair=mask_pairs(), spacing=spacings, shift=st.tuples(*[st.integers(-PAD, PAD)] * 3))
def test_translating_both_masks_changes_nothing(pair, spacing, shift):
    a, b = (_pad(m) for m in pair)
    moved = [np.roll(m, shift, axis=(0, 1, 2)) for m in (a, b)]  # stays inside the padding: no wrap-around
    r0, r1 = _score(a, b, spacing), _score(*moved, spacing)
    assert (r0.dice, r0.iou) == (r1.dice, r1.iou)
    assert np.isclose(r0.hd95_mm, r1.hd95_mm, rtol=1e-12, atol=1e-12)
    assert np.isclose(r0.nsd, r1.nsd, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(pair=mask_pairs(), spacing=spacings, axis=st.integers(0, 2), t=st.integers(-PAD, PAD).filter(bool))
def test_translating_one_mask_bounds_hd95(pair, spacing, axis, t):
    a = _pad(pair[0])
    moved = np.roll(a, t, axis=axis)
    r = _score(moved, a, spacing)
    assert r.hd95_mm <= abs(t) * spacing[axis] * (1 + 1e-12) + 1e-12
    assert r.hd95_mm > 0.0  # a shifted mask is never the same set
    # a tolerance at least as large as the shift puts every surface point within tolerance
    assert _score(moved, a, spacing, tol=abs(t) * spacing[axis] * (1 + 1e-9)).nsd == 1.0
