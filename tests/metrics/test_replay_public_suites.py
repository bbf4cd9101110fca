"""The public metric test suites of DeepMind surface-distance and MONAI, replayed through medseg.

Each case below restates a case of those suites (the masks, spacing and expected numbers they
assert) in medseg's terms, with the matching convention chosen:

* surface-distance (``surface_distance_test.py``): medseg's default, surfel-based mode. Raw
  functions (``compute_surface_distances`` + ``hd_percentile_mm`` / ``nsd`` / ``surface_overlap`` /
  ``mean_surface_distances_mm``) keep that package's inf / nan for empty masks; its Dice of two
  empty masks (nan) is medseg's ``empty_reference="nan"``.
* MONAI (``tests/metrics/test_hausdorff_distance.py``, ``test_surface_distance.py``,
  ``test_surface_dice.py``, ``test_compute_meandice.py``, ``test_compute_meaniou.py``):
  ``mode="monai"``. MONAI's Dice / IoU with ``ignore_empty=True`` (its default) give nan for an empty
  reference: ``empty_reference="nan"``; with ``ignore_empty=False`` they give 1 (both empty) and 0
  (reference empty), medseg's default. MONAI's surface Dice gives 0 when only one mask is empty
  (medseg's default) and nan when both are (``empty_reference="nan"``).

Not expressible (not replayed): MONAI's chessboard / taxicab distances, per-connected-component
metrics, ``use_subvoxels`` apart from its DeepMind-equivalent cases (replayed in the default mode),
tensor-type / one-hot input checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.metrics.aggregate import summarize_values
from medseg.metrics.evaluate import evaluate_arrays
from medseg.metrics.surface import compute_surface_distances, hd_percentile_mm, nsd
from medseg.metrics.surface_monai import compute_voxel_surface_distances, hd_percentile_mm_monai, nsd_monai
from medseg.metrics.surface_stats import assd_mm, mean_surface_distances_mm, surface_overlap

nan, inf = math.nan, math.inf


def _eq(actual, expected, places=3):
    """Equal to ``places`` decimals; nan equals nan and inf equals inf."""
    for a, e in zip(np.atleast_1d(actual), np.atleast_1d(expected)):
        if math.isnan(e) or math.isinf(e):
            np.testing.assert_equal(a, e)
        else:
            assert round(abs(a - e), places) == 0, (actual, expected)


# ----------------------------------------------------------------------------- surface-distance
def _check_deepmind(ref, pred, spacing, *, asd, hd100, hd95, overlap_1mm, nsd_1mm, dice):
    sd = compute_surface_distances(ref, pred, spacing)
    _eq(mean_surface_distances_mm(sd), asd)
    _eq(hd_percentile_mm(sd, 100), hd100)
    _eq(hd_percentile_mm(sd, 95), hd95)
    _eq(surface_overlap(sd, 1.0), overlap_1mm)
    _eq(nsd(sd, 1.0), nsd_1mm)
    (row,) = evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=spacing, labels=[1],
                             empty_reference="nan")
    _eq(row.dice, dice)


@pytest.mark.parametrize("ndim", [2, 3])
def test_deepmind_two_single_pixels_2mm_apart(ndim):
    shape, spacing = ((128, 128), (2, 1)) if ndim == 2 else ((128, 128, 128), (3, 2, 1))
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    ref[(50,) * (ndim - 2) + (60, 70)] = True
    pred[(50,) * (ndim - 2) + (60, 72)] = True
    if ndim == 2:  # the 2D case also fixes every contour piece: 4 half diagonals each, at 1 and 2 mm
        sd = compute_surface_distances(ref, pred, spacing)
        np.testing.assert_array_equal(sd.areas_ref_mm2, [0.5 * math.sqrt(5)] * 4)
        np.testing.assert_array_equal(sd.distances_ref_to_pred_mm, [1, 1, 2, 2])
        np.testing.assert_array_equal(sd.distances_pred_to_ref_mm, [1, 1, 2, 2])
    _check_deepmind(ref, pred, spacing, asd=(1.5, 1.5), hd100=2.0, hd95=2.0, overlap_1mm=(0.5, 0.5), nsd_1mm=0.5,
                    dice=0.0)


def test_deepmind_2d_two_squares_shifted_by_one_pixel():
    # reference: 2x2 square; prediction: the same square grown by one row below; spacing (2, 1)
    ref = np.zeros((6, 6), bool)
    ref[1:3, 1:3] = True
    pred = np.zeros((6, 6), bool)
    pred[1:4, 1:3] = True
    v, h = 2.0, 1.0
    d = 0.5 * math.hypot(h, v)
    sd = compute_surface_distances(ref, pred, (v, h))
    # reference contour (clockwise from the top left): d h d v d h d v; all on the prediction's contour
    # but the bottom middle corner, which is inside the prediction, one column (h) from its side
    # contour. Prediction contour: d h d v v d h d v v; its three bottom corners lie one row (v) below
    ref_lengths = [d, h, d, v, d, h, d, v]
    ref_dist = [0] * 5 + [h] + [0] * 2
    pred_lengths = [d, h, d, v, v, d, h, d, v, v]
    pred_dist = [0] * 5 + [v] * 3 + [0] * 2
    order_r = np.lexsort((ref_lengths, ref_dist))
    order_p = np.lexsort((pred_lengths, pred_dist))
    np.testing.assert_allclose(sd.areas_ref_mm2, np.array(ref_lengths)[order_r])
    np.testing.assert_allclose(sd.distances_ref_to_pred_mm, np.array(ref_dist, float)[order_r])
    np.testing.assert_allclose(sd.areas_pred_mm2, np.array(pred_lengths)[order_p])
    np.testing.assert_allclose(sd.distances_pred_to_ref_mm, np.array(pred_dist, float)[order_p])
    (row,) = evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=(v, h), labels=[1])
    assert row.dice == pytest.approx(2 * 4 / (4 + 6))


def test_deepmind_3d_two_slabs_shifted_by_one_slice():
    ref = np.zeros((100, 100, 100), bool)
    pred = np.zeros_like(ref)
    ref[0:50] = True
    pred[0:51] = True
    _check_deepmind(ref, pred, (2, 1, 1), asd=(0.322, 0.339), hd100=2.0, hd95=2.0, overlap_1mm=(0.842, 0.830),
                    nsd_1mm=0.836, dice=0.990)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("which", ["pred", "ref", "both"])
def test_deepmind_empty_masks(ndim, which):
    shape, spacing = ((128, 128), (3, 2)) if ndim == 2 else ((128, 128, 128), (3, 2, 1))
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    at = (50,) * (ndim - 2) + (60, 70)
    if which == "pred":      # empty prediction
        ref[at] = True
        exp = {"asd": (inf, nan), "overlap_1mm": (0.0, nan), "nsd_1mm": 0.0, "dice": 0.0}
    elif which == "ref":     # empty reference
        pred[at] = True
        exp = {"asd": (nan, inf), "overlap_1mm": (nan, 0.0), "nsd_1mm": 0.0, "dice": nan}
    else:
        exp = {"asd": (nan, nan), "overlap_1mm": (nan, nan), "nsd_1mm": nan, "dice": nan}
    if which == "ref":
        # surface-distance's Dice of an empty reference and a non-empty prediction is 0: medseg's default
        (row,) = evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=spacing, labels=[1])
        assert row.dice == 0.0
        exp["dice"] = nan  # ... while empty_reference="nan" leaves the row out
    _check_deepmind(ref, pred, spacing, hd100=inf, hd95=inf, **exp)


@pytest.mark.parametrize("ref_shape, pred_shape, spacing", [((2, 2, 2), (2, 2), (1, 1)), ((2, 2), (2, 2, 2), (1, 1)),
                                                           ((2, 2), (2, 2), (1, 1, 1))])
def test_deepmind_incompatible_shapes_raise(ref_shape, pred_shape, spacing):
    with pytest.raises(ValueError):
        compute_surface_distances(np.zeros(ref_shape, bool), np.zeros(pred_shape, bool), spacing)


@pytest.mark.parametrize("shape", [(2,), (2, 2, 2, 2)])
def test_deepmind_only_2d_and_3d(shape):
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_surface_distances(np.zeros(shape, bool), np.zeros(shape, bool), (1,) * len(shape))


# ----------------------------------------------------------------------------- MONAI: HD and ASD
def _ball(radius, centre, spacing=(1.0, 1.0, 1.0), shape=(99, 99, 99)):
    """Voxels whose index times the spacing lies within ``radius`` of ``centre`` (MONAI's test spheres:
    the centre is given in the scaled coordinates)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum((g * s - c) ** 2 for g, s, c in zip(grids, spacing, centre))
    return (d2 <= radius * radius).astype(np.uint8)


SP = (0.85, 1.2, 0.9)
# (y_pred, y, spacing, percentile, HD directed pred->ref, HD symmetric)
MONAI_HD = [
    (_ball(20, (49, 49, 49)), _ball(20, (49, 49, 49)), None, None, 0.0, 0.0),
    (_ball(20, (20, 20, 20)), _ball(20, (19, 19, 19)), None, None, 1.7320508075688772, 1.7320508075688772),
    (_ball(33, (19, 33, 22)), _ball(33, (20, 33, 22)), None, None, 1.0, 1.0),
    (_ball(20, (20, 33, 22)), _ball(40, (20, 33, 22)), None, None, 20.09975124224178, 20.223748416156685),
    (_ball(20, (20, 33, 22)), _ball(40, (20, 33, 22)), None, 95, 19.924858845171276, 20.09975124224178),
    (_ball(20, (20, 20, 20), SP), _ball(20, (19, 19, 19), SP), SP, None, 2.0808651447296143, 2.2671568),
    (_ball(15, (20, 33, 22), SP), _ball(30, (20, 33, 22), SP), SP, None, 15.439640998840332, 15.62594),
]


@pytest.mark.parametrize("case", range(len(MONAI_HD)))
def test_monai_hausdorff(case):
    pred, ref, spacing, percentile, directed, symmetric = MONAI_HD[case]
    spacing = spacing or (1.0, 1.0, 1.0)
    p = 100.0 if percentile is None else float(percentile)
    (row,) = evaluate_arrays(pred, ref, spacing_mm=spacing, labels=[1], mode="monai", percent=p)
    np.testing.assert_allclose(row.hd95_mm, symmetric, rtol=1e-6)
    vsd = compute_voxel_surface_distances(ref, pred, spacing)
    d = vsd.distances_pred_to_ref_mm
    np.testing.assert_allclose(float(np.quantile(d, np.float32(p / 100.0))), directed, rtol=1e-6)


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_monai_hausdorff_one_empty_is_inf(empty):
    ball = _ball(40, (20, 33, 22))
    zero = np.zeros_like(ball)
    pred, ref = (zero, ball) if empty == "pred" else (ball, zero)
    assert hd_percentile_mm_monai(compute_voxel_surface_distances(ref, pred, (1, 1, 1)), 100) == inf


def test_monai_hausdorff_and_asd_both_empty_are_left_out():
    # MONAI: nan for the case, aggregated to 0 with not_nans = 0; medseg: nan, left out of the mean
    z = np.zeros((99, 99, 99), np.uint8)
    for spacing in ((1.0, 1.0, 1.0), SP):
        (row,) = evaluate_arrays(z, z, spacing_mm=spacing, labels=[1], mode="monai", empty_reference="nan",
                                 metrics=["assd_mm"])
        assert math.isnan(row.hd95_mm) and math.isnan(row.value("assd_mm"))
        assert summarize_values([row.hd95_mm])["n"] == 0


# (y_pred, y, spacing, ASD symmetric, ASD directed pred->ref)
MONAI_ASD = [
    (_ball(20, (49, 49, 49)), _ball(20, (49, 49, 49)), None, 0.0, 0.0),
    (_ball(33, (19, 33, 22)), _ball(33, (20, 33, 22)), None, 0.350217, 0.3483278807706289),
    (_ball(20, (20, 33, 22)), _ball(40, (20, 33, 22)), None, 15.117741, 12.040033513150455),
    (np.zeros((99, 99, 99), np.uint8), _ball(40, (20, 33, 22)), None, inf, inf),
    (_ball(33, (42, 45, 52), SP), _ball(33, (43, 45, 52), SP), SP, 0.4951, 0.4951),
]


@pytest.mark.parametrize("case", range(len(MONAI_ASD)))
def test_monai_average_surface_distance(case):
    pred, ref, spacing, symmetric, directed = MONAI_ASD[case]
    vsd = compute_voxel_surface_distances(ref, pred, spacing or (1.0, 1.0, 1.0))
    rtol = 1e-5 if case < 4 else 1e-4  # the last expected value is given to 4 digits
    if math.isinf(symmetric):
        assert assd_mm(vsd) == inf and mean_surface_distances_mm(vsd)[1] == inf
        return
    np.testing.assert_allclose(assd_mm(vsd), symmetric, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(mean_surface_distances_mm(vsd)[1], directed, rtol=rtol, atol=1e-12)


# ----------------------------------------------------------------------------- MONAI: surface Dice
def _shifted_halves_2d():
    pred = np.zeros((480, 640), np.uint8)
    ref = np.zeros((480, 640), np.uint8)
    pred[:, 50:] = 1
    ref[:, 60:] = 1  # 10 columns apart
    return pred, ref


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.85, 1.2)])
def test_monai_surface_dice_2d_shift(spacing):
    pred, ref = _shifted_halves_2d()
    # foreground (label 1) and background (label 2) of the same pair, as MONAI's two classes
    p = np.where(pred == 1, 1, 2).astype(np.uint8)
    r = np.where(ref == 1, 1, 2).astype(np.uint8)

    def nsd_at(tol):
        rows = evaluate_arrays(p, r, spacing_mm=spacing, labels=[2, 1], mode="monai", tolerance_mm=tol)
        return [row.nsd for row in rows]

    far = 478 + 480 + 9 * 2  # edge pixels farther than 0 from the other edge
    exp0 = [1 - far / (480 * 4 + 48 * 2 + 58 * 2), 1 - far / (480 * 4 + 588 * 2 + 578 * 2)]
    np.testing.assert_allclose(nsd_at(0.0), exp0, rtol=1e-7)
    r0, r1, r9, r10, r11 = (nsd_at(t) for t in (0, 1, 9, 10, 11))
    for c in range(2):
        assert r0[c] < r1[c] < r9[c] < r10[c]
    if spacing == (1.0, 1.0):
        assert r10 == r11
    else:  # 10 columns of 1.2 mm: every tolerance from 12 mm on gives the same (1.0)
        assert r10[0] < r11[0] and nsd_at(12) == nsd_at(13)
    # an image without any foreground: background NSD 1, foreground nan (both empty)
    z = np.full((480, 640), 2, np.uint8)
    rows = evaluate_arrays(z, z, spacing_mm=spacing, labels=[2, 1], mode="monai", tolerance_mm=0, empty_reference="nan")
    assert rows[0].nsd == 1.0 and math.isnan(rows[1].nsd)


def test_monai_surface_dice_3d_shift():
    pred = np.zeros((200, 110, 80), np.uint8)
    ref = np.zeros_like(pred)
    pred[:, :, 20:] = 1
    ref[:, :, 30:] = 1
    p = np.where(pred == 1, 1, 2).astype(np.uint8)
    r = np.where(ref == 1, 1, 2).astype(np.uint8)
    rows = evaluate_arrays(p, r, spacing_mm=(1, 1, 1), labels=[2, 1], mode="monai", tolerance_mm=0)
    common = 200 * 110 + 198 * 108 + 9 * 200 * 2 + 9 * 108 * 2
    exp = [1 - common / (200 * 110 * 4 + (28 + 18) * 200 * 2 + (28 + 18) * 108 * 2),
           1 - common / (200 * 110 * 4 + (58 + 48) * 200 * 2 + (58 + 48) * 108 * 2)]
    np.testing.assert_allclose([row.nsd for row in rows], exp, rtol=1e-7)
    at = {t: [row.nsd for row in evaluate_arrays(p, r, spacing_mm=(1, 1, 1), labels=[2, 1], mode="monai",
                                                    tolerance_mm=t)] for t in (1, 10, 11)}
    for c in range(2):
        assert exp[c] < at[1][c] < at[10][c]
    assert at[10] == at[11]


def test_monai_surface_dice_all_distances_2d():
    pred = np.zeros((10, 10), np.uint8)
    ref = np.zeros((10, 10), np.uint8)
    pred[1:4, 1] = 1
    ref[5:8, 6] = 1
    p = np.where(pred == 1, 1, 2).astype(np.uint8)
    r = np.where(ref == 1, 1, 2).astype(np.uint8)
    for (tol_bg, tol_fg), exp in [((0, 0), (1 - 12 / 84, 0.0)), ((2.8, 5.5), (1 - 3 / 84, 1 - 4 / 6)),
                                  ((3, 6), (1 - 1 / 84, 1 - 2 / 6))]:
        rows = evaluate_arrays(p, r, spacing_mm=(1, 1), labels=[2, 1], mode="monai",
                               tolerance_mm={2: tol_bg, 1: tol_fg})
        np.testing.assert_allclose([row.nsd for row in rows], exp, atol=1e-6)


def test_monai_surface_dice_not_predicted_not_present():
    # class 1 only predicted, class 2 only in the reference, class 3 in neither: 0, 0, nan;
    # the background (here label 4) agrees exactly: 1
    pred = np.full((80, 80), 4, np.uint8)
    ref = np.full((80, 80), 4, np.uint8)
    pred[10:20, 10:20] = 1
    ref[10:20, 10:20] = 2
    bg_pred, bg_ref = (pred == 4).astype(np.uint8), (ref == 4).astype(np.uint8)
    (bg,) = evaluate_arrays(bg_pred, bg_ref, spacing_mm=(1, 1), labels=[1], mode="monai")
    rows = evaluate_arrays(pred, ref, spacing_mm=(1, 1), labels=[1, 2, 3], mode="monai")
    assert bg.nsd == 1.0 and [r.nsd for r in rows[:2]] == [0.0, 0.0]
    (both_empty,) = evaluate_arrays(pred, ref, spacing_mm=(1, 1), labels=[3], mode="monai", empty_reference="nan")
    assert math.isnan(both_empty.nsd)
    # MONAI's mean over classes with background: nanmean(1, 0, 0, nan) = 1/3; medseg's summary leaves nan out
    assert summarize_values([bg.nsd, rows[0].nsd, rows[1].nsd, both_empty.nsd])["mean"] == pytest.approx(1 / 3)


def test_monai_surface_dice_bad_tolerances_raise():
    pred = np.zeros((80, 80), np.uint8)
    ref = np.zeros((80, 80), np.uint8)
    pred[10:20, 10:20] = 1
    ref[20:30, 20:30] = 1
    for tol in (inf, nan, -0.22):
        with pytest.raises(ValueError, match="tolerance"):
            evaluate_arrays(pred, ref, spacing_mm=(1, 1), labels=[1], mode="monai", tolerance_mm=tol)
    with pytest.raises(ValueError, match="differ in shape"):
        compute_voxel_surface_distances(pred, ref[:, :50], (1, 1))


def test_monai_surface_dice_subvoxels_equal_deepmind():
    # MONAI's use_subvoxels=True cases are surface-distance's definition: medseg's default mode
    ref = np.zeros((128, 128, 128), bool)
    pred = np.zeros_like(ref)
    ref[50, 60, 70] = True
    assert nsd(compute_surface_distances(ref, pred, (3, 2, 1)), 1.0) == 0.0
    ref[50, 60, 70] = False
    pred[50, 60, 72] = True
    assert nsd(compute_surface_distances(ref, pred, (3, 2, 1)), 1.0) == 0.0
    ref[50, 60, 70] = True
    assert nsd(compute_surface_distances(ref, pred, (3, 2, 1)), 1.0) == 0.5
    assert nsd_monai(compute_voxel_surface_distances(ref, pred, (3, 2, 1)), 1.0) == 0.0  # voxel-based differs


# ----------------------------------------------------------------------------- MONAI: Dice, IoU
# MONAI's (batch, channel, 2, 2) test tensors, one 2x2 mask per (batch item, channel), written as
# four digits row by row
def _m(code):
    return np.array([int(c) for c in code], np.uint8).reshape(2, 2)


MULTI_PRED = [["1110", "0100", "0111"], ["1011", "0111", "0110"]]
MULTI_REF = [["1111", "0000", "0000"], ["0001", "1100", "0010"]]


def _scores(pred, ref, metric, empty_reference="nan"):
    (row,) = evaluate_arrays(_m(pred), _m(ref), spacing_mm=(1, 1), labels=[1], empty_reference=empty_reference)
    return getattr(row, metric)


@pytest.mark.parametrize("metric, expected", [("dice", 0.8), ("iou", 2 / 3)])
def test_monai_dice_iou_single(metric, expected):
    assert _scores("1001", "1011", metric) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("metric, expected", [("dice", [[0.5, 0.0], [2 / 3, 2 / 3]]),
                                              ("iou", [[1 / 3, 0.0], [0.5, 0.5]])])
def test_monai_dice_iou_without_background(metric, expected):
    pred = [["0100", "0011", "1000"], ["0001", "1000", "0110"]]
    ref = [["0001", "1010", "0100"], ["0001", "1100", "0010"]]
    got = [[_scores(pred[b][c], ref[b][c], metric) for c in (1, 2)] for b in (0, 1)]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_monai_dice_iou_nan_for_empty_reference(metric):
    pred = [["0000", "0000", "1111"], ["0000", "0000", "1111"]]
    ref = [["1111", "0000", "0000"], ["0110", "1001", "0000"]]
    got = [[math.isnan(_scores(pred[b][c], ref[b][c], metric)) for c in range(3)] for b in range(2)]
    assert got == [[False, True, True], [False, False, True]]


@pytest.mark.parametrize("metric, per_channel, overall", [("dice", [0.6786, 0.4000, 0.6667], 0.689683),
                                                          ("iou", [0.5416, 0.2500, 0.5000], 0.5555)])
def test_monai_dice_iou_means_leave_empty_references_out(metric, per_channel, overall):
    vals = np.array([[_scores(MULTI_PRED[b][c], MULTI_REF[b][c], metric) for c in range(3)] for b in range(2)])
    got = [summarize_values(vals[:, c])["mean"] for c in range(3)]
    np.testing.assert_allclose(got, per_channel, atol=1e-4)
    # MONAI's "mean": nanmean over channels per item, then over items
    assert np.nanmean(np.nanmean(vals, axis=1)) == pytest.approx(overall, abs=1e-4)


@pytest.mark.parametrize("metric, overall", [("dice", 0.857143), ("iou", 0.75)])
def test_monai_dice_iou_mean_with_channels_empty_everywhere(metric, overall):
    ref = [["1111", "0000", "0000"], ["1111", "0000", "0000"]]
    vals = np.array([[_scores(MULTI_PRED[b][c], ref[b][c], metric) for c in range(3)] for b in range(2)])
    assert np.isnan(vals[:, 1:]).all()
    assert summarize_values(vals.ravel())["mean"] == pytest.approx(overall, abs=1e-4)


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_monai_dice_iou_ignore_empty_false_is_medseg_default(metric):
    ones, zeros = np.ones((3, 3), np.uint8), np.zeros((3, 3), np.uint8)
    for pred, ref, expected in [(ones, ones, 1.0), (zeros, zeros, 1.0), (ones, zeros, 0.0)]:
        (row,) = evaluate_arrays(pred, ref, spacing_mm=(1, 1), labels=[1])
        assert getattr(row, metric) == expected
