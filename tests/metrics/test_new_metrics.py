"""ASSD, directed mean distances, HD at any percentile, surface overlaps, volumes, sensitivity,
specificity, precision: hand-worked 2D and 3D cases (anisotropic spacing) in both modes, and
agreement with DeepMind surface-distance and MONAI on random masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.metrics.catalog import parse_metrics
from medseg.metrics.evaluate import evaluate_arrays
from medseg.metrics.surface import compute_surface_distances, hd_percentile_mm
from medseg.metrics.surface_monai import compute_voxel_surface_distances, hd_percentile_mm_monai
from medseg.metrics.surface_stats import assd_mm, mean_surface_distances_mm, surface_overlap

ALL = parse_metrics("all")


def _sd_pkg():
    np.Inf = np.inf  # noqa: NPY201 -- surface-distance 0.1 still uses np.Inf (removed in NumPy 2)
    import surface_distance

    return surface_distance


def _squares_2d():
    a = np.zeros((4, 6), bool)
    a[1:3, 1:3] = True
    b = np.zeros_like(a)
    b[1:3, 2:4] = True  # one pixel to the right
    return a, b


def test_2d_contour_hand_case_anisotropic():
    # spacing (sy, sx) = (2, 0.5). The 2x2 square has 8 contour corners: 4 half diagonals
    # D = 0.5*sqrt(2^2 + 0.5^2), 2 horizontal pieces (sx) and 2 vertical pieces (sy). Shifted by one
    # column, 4 corners (lengths sx, D, sx, D) lie on the other contour (distance 0) and 4 (D, sy, sy, D)
    # lie one column (0.5 mm) away.
    a, b = _squares_2d()
    sy, sx = 2.0, 0.5
    d = 0.5 * math.hypot(sy, sx)
    sd = compute_surface_distances(a, b, (sy, sx))
    total = 4 * d + 2 * sx + 2 * sy
    assert sd.areas_ref_mm2.sum() == pytest.approx(total)
    expected_mean = 0.5 * (2 * d + 2 * sy) / total
    assert mean_surface_distances_mm(sd) == pytest.approx((expected_mean, expected_mean))
    assert assd_mm(sd) == pytest.approx(expected_mean)
    within = (2 * d + 2 * sx) / total
    assert surface_overlap(sd, 0.4) == pytest.approx((within, within))
    assert surface_overlap(sd, 0.5) == (1.0, 1.0)
    assert hd_percentile_mm(sd, 100) == 0.5
    assert hd_percentile_mm(sd, 30) == 0.0  # 30 % of the length lies at distance 0 (within = 0.336)
    assert hd_percentile_mm(sd, 40) == 0.5


def test_2d_evaluate_all_metrics_by_hand():
    a, b = _squares_2d()
    (row,) = evaluate_arrays(b.astype(np.uint8), a.astype(np.uint8), spacing_mm=(2.0, 0.5), labels=[1],
                             metrics=ALL, tolerance_mm=0.4)
    v = row.as_dict()
    assert v["dice"] == 0.5 and v["iou"] == pytest.approx(1 / 3)
    assert v["sensitivity"] == 0.5 and v["precision"] == 0.5
    assert v["specificity"] == pytest.approx((24 - 4 - 2) / (24 - 4))  # 2 false positives, 20 negatives
    assert v["vol_ref_ml"] == v["vol_pred_ml"] == 4 * 1.0  # 2D: area in mm^2 (4 pixels of 1 mm^2)
    assert v["vol_diff_ml"] == 0.0 and v["rel_vol_diff"] == 0.0
    assert v["hd100_mm"] == 0.5


def test_3d_single_voxels_anisotropic():
    # one voxel each, 3 voxels apart along x (sx = 0.5): of each voxel's 8 corner surfels (equal
    # areas), 4 are 1.0 mm and 4 are 1.5 mm from the other surface
    ref = np.zeros((3, 3, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = 1
    pred[1, 1, 4] = 1
    (row,) = evaluate_arrays(pred, ref, spacing_mm=(1.0, 1.0, 0.5), labels=[1], metrics=ALL, tolerance_mm=1.2)
    v = row.as_dict()
    assert v["assd_mm"] == pytest.approx(1.25)
    assert v["msd_ref_to_pred_mm"] == pytest.approx(1.25) and v["msd_pred_to_ref_mm"] == pytest.approx(1.25)
    assert v["hd100_mm"] == 1.5 and v["hd95_mm"] == 1.5
    assert v["surface_overlap_ref"] == pytest.approx(0.5) and v["surface_overlap_pred"] == pytest.approx(0.5)
    assert v["nsd"] == pytest.approx(0.5)
    assert (v["dice"], v["sensitivity"], v["precision"]) == (0.0, 0.0, 0.0)
    assert v["specificity"] == pytest.approx(70 / 71)
    assert v["vol_ref_ml"] == pytest.approx(0.0005) and v["vol_diff_ml"] == 0.0


def test_3d_volumes_and_counts_by_hand():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred = np.zeros_like(ref)
    pred[1, 1, 1:3] = 1
    pred[2, 1, 1] = 1  # 3 voxels, all inside the reference
    (row,) = evaluate_arrays(pred, ref, spacing_mm=(2.0, 1.0, 0.5), labels=[1], metrics=ALL)
    v = row.as_dict()  # voxel = 1 mm^3 = 0.001 ml
    assert v["vol_ref_ml"] == pytest.approx(0.008) and v["vol_pred_ml"] == pytest.approx(0.003)
    assert v["vol_diff_ml"] == pytest.approx(-0.005) and v["abs_vol_diff_ml"] == pytest.approx(0.005)
    assert v["rel_vol_diff"] == pytest.approx(-0.625)
    assert v["sensitivity"] == pytest.approx(3 / 8) and v["precision"] == 1.0 and v["specificity"] == 1.0


def test_monai_mode_2d_edges_by_hand():
    # 3x3 squares one column apart: erosion leaves 8 edge pixels each; 4 of them coincide with the
    # other edge, the other 4 lie one column (sx = 0.5 mm) away
    a = np.zeros((6, 7), np.uint8)
    a[1:4, 1:4] = 1
    b = np.zeros_like(a)
    b[1:4, 2:5] = 1
    vsd = compute_voxel_surface_distances(a, b, (2.0, 0.5))
    assert sorted(vsd.distances_ref_to_pred_mm.tolist()) == [0.0] * 4 + [0.5] * 4
    (row,) = evaluate_arrays(b, a, spacing_mm=(2.0, 0.5), labels=[1], metrics=ALL, mode="monai", tolerance_mm=0.25)
    v = row.as_dict()
    assert v["assd_mm"] == pytest.approx(0.25) and v["msd_ref_to_pred_mm"] == pytest.approx(0.25)
    assert v["hd100_mm"] == 0.5 and v["surface_overlap_ref"] == 0.5 and v["nsd"] == 0.5
    # linear-interpolation percentile of [0]*4 + [0.5]*4 at 0.95: position 6.65 -> 0.5
    assert v["hd95_mm"] == 0.5 and hd_percentile_mm_monai(vsd, 40) == 0.0  # position 2.8 -> 0
    assert hd_percentile_mm_monai(vsd, 50) == pytest.approx(0.25)  # position 3.5: halfway from 0 to 0.5


@pytest.mark.parametrize("status_case", ["both_empty", "pred_empty", "ref_empty"])
def test_empty_conventions_for_new_metrics(status_case):
    ref = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(ref)
    if status_case == "pred_empty":
        ref[1:3, 1:3, 1:3] = 1
    if status_case == "ref_empty":
        pred[1:3, 1:3, 1:3] = 1
    spacing = (2.0, 1.0, 0.5)
    diag = math.sqrt(8**2 + 5**2 + 3**2)
    (row,) = evaluate_arrays(pred, ref, spacing_mm=spacing, labels=[1], metrics=ALL)
    v = row.as_dict()
    assert v["status"] == status_case
    good = status_case == "both_empty"
    for c in ("dice", "nsd", "surface_overlap_ref", "surface_overlap_pred", "sensitivity", "precision"):
        assert v[c] == (1.0 if good else 0.0), c
    for c in ("assd_mm", "hd100_mm", "msd_ref_to_pred_mm", "msd_pred_to_ref_mm"):
        assert v[c] == pytest.approx(0.0 if good else diag), c
    expected_rel = {"both_empty": 0.0, "pred_empty": -1.0, "ref_empty": math.nan}[status_case]
    np.testing.assert_equal(v["rel_vol_diff"], expected_rel)  # (V_P - V_R) / V_R, undefined for V_R = 0
    (nan_row,) = evaluate_arrays(pred, ref, spacing_mm=spacing, labels=[1], metrics=ALL, empty_reference="nan")
    if status_case == "pred_empty":
        assert nan_row.as_dict() == v  # the reference is not empty: unchanged
    else:
        assert all(math.isnan(nan_row.value(c)) for c in ALL)


def _random_pair(rng, shape):
    a = ndimage.binary_opening(rng.random(shape) > 0.45)
    b = ndimage.binary_opening(rng.random(shape) > 0.45)
    return a, b


@pytest.mark.parametrize("shape, spacing", [((24, 30), (0.7, 1.9)), ((10, 14, 12), (2.5, 0.8, 1.1))])
def test_surface_stats_match_surface_distance(shape, spacing):
    sdp = _sd_pkg()
    rng = np.random.default_rng(3)
    for _ in range(4):
        a, b = _random_pair(rng, shape)
        ref = sdp.compute_surface_distances(a, b, spacing)
        sd = compute_surface_distances(a, b, spacing)
        assert mean_surface_distances_mm(sd) == pytest.approx(sdp.compute_average_surface_distance(ref), rel=1e-12)
        assert surface_overlap(sd, 1.5) == pytest.approx(sdp.compute_surface_overlap_at_tolerance(ref, 1.5),
                                                         rel=1e-12)
        for p in (100, 99, 50):
            assert hd_percentile_mm(sd, p) == pytest.approx(sdp.compute_robust_hausdorff(ref, p), rel=1e-12)


@pytest.mark.parametrize("shape, spacing", [((24, 30), (0.7, 1.9)), ((10, 14, 12), (2.5, 0.8, 1.1))])
def test_monai_mode_matches_monai(shape, spacing):
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(5)
    for _ in range(4):
        a, b = _random_pair(rng, shape)
        (row,) = evaluate_arrays(b.astype(np.uint8), a.astype(np.uint8), spacing_mm=spacing, labels=[1],
                                 metrics=["assd_mm", "msd_pred_to_ref_mm", "hd100_mm"], mode="monai", tolerance_mm=1.3)
        yp = torch.from_numpy(b[None, None].astype(np.float32))
        y = torch.from_numpy(a[None, None].astype(np.float32))
        sym = compute_average_surface_distance(yp, y, include_background=True, symmetric=True, spacing=list(spacing))
        directed = compute_average_surface_distance(yp, y, include_background=True, spacing=list(spacing))
        hd = compute_hausdorff_distance(yp, y, include_background=True, spacing=list(spacing))
        nsd = compute_surface_dice(yp, y, [1.3], include_background=True, spacing=list(spacing))
        assert row.value("assd_mm") == pytest.approx(float(sym), rel=1e-5)
        assert row.value("msd_pred_to_ref_mm") == pytest.approx(float(directed), rel=1e-5)
        assert row.value("hd100_mm") == pytest.approx(float(hd), rel=1e-6)
        assert row.nsd == pytest.approx(float(nsd), rel=1e-6)


def test_parse_metrics():
    assert parse_metrics("dice, HD99.5 ,assd") == ["dice", "hd99.5_mm", "assd_mm"]
    assert parse_metrics(["sensitivity", "hd95"]) == ["sensitivity", "hd95_mm"]
    assert "hd100_mm" in ALL and "vol_diff_ml" in ALL and len(ALL) == len(set(ALL))
    for bad in ("dcie", "hd101"):
        with pytest.raises(ConfigError, match="unknown metric|percentile"):
            parse_metrics(bad)


def test_any_percentile_column_in_both_modes():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.roll(ref, 1, axis=2)
    for mode in ("surface-distance", "monai"):
        (row,) = evaluate_arrays(pred, ref, spacing_mm=(1.0, 1.0, 1.0), labels=[1], metrics=["hd80_mm", "hd100_mm"],
                                 mode=mode)
        assert row.value("hd80_mm") <= row.value("hd100_mm") == 1.0


@pytest.mark.parametrize("mode, name", [("surface-distance", "surface_distances_cropped"),
                                        ("monai", "compute_voxel_surface_distances")])
def test_all_metrics_from_one_surface_computation_per_label(monkeypatch, mode, name):
    import medseg.metrics.evaluate as ev

    calls = []
    real = getattr(ev, name)
    monkeypatch.setattr(ev, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = np.zeros((8, 9, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[1:3, 6:8, 6:9] = 2
    pred = np.roll(ref, 1, axis=1)
    rows = evaluate_arrays(pred, ref, spacing_mm=(2.0, 1.0, 0.5), labels=[1, 2], metrics=ALL, mode=mode)
    assert len(rows) == 2 and len(calls) == 2  # one per label, shared by HD, NSD, ASSD, MSD, overlaps


def test_totalsegmentator_new_metrics_match_surface_distance():
    from medseg.io import read_volume
    from tests.paths import shared_path

    d = shared_path("totalsegmentator")
    ref = read_volume(d / "example_seg.nii.gz", is_label=True)
    pred = read_volume(d / "example_seg_fast.nii.gz", is_label=True)
    labels = sorted(set(np.unique(ref.array).tolist()) & set(np.unique(pred.array).tolist()) - {0})
    rows = evaluate_arrays(pred.array, ref.array, spacing_mm=ref.spacing_mm, labels=labels, metrics=ALL,
                           tolerance_mm=3.0)
    sdp = _sd_pkg()
    voxel_ml = float(np.prod(ref.spacing_mm)) / 1000
    for r in rows:
        a, b = ref.array == r.label, pred.array == r.label
        sd = sdp.compute_surface_distances(a, b, ref.spacing_mm)
        v = r.as_dict()
        assert (v["msd_ref_to_pred_mm"], v["msd_pred_to_ref_mm"]) == pytest.approx(
            sdp.compute_average_surface_distance(sd), rel=1e-9)
        assert (v["surface_overlap_ref"], v["surface_overlap_pred"]) == pytest.approx(
            sdp.compute_surface_overlap_at_tolerance(sd, 3.0), rel=1e-9)
        assert v["hd100_mm"] == pytest.approx(sdp.compute_robust_hausdorff(sd, 100), rel=1e-9)
        assert v["vol_diff_ml"] == pytest.approx((b.sum() - a.sum()) * voxel_ml)
        assert v["sensitivity"] == pytest.approx((a & b).sum() / a.sum())
    assert len(rows) >= 30
