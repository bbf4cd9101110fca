"""Surface distances, HD95 and NSD: hand-worked cases and agreement with DeepMind surface-distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.metrics._surfel_table import surfel_area_table
from medseg.metrics.surface import (
    compute_surface_distances,
    hd_percentile_mm,
    image_diagonal_mm,
    neighbourhood_codes,
    nsd,
)
from tests.paths import shared_path


def _sd_pkg():
    np.Inf = np.inf  # noqa: NPY201 -- surface-distance 0.1 still uses np.Inf (removed in NumPy 2)
    import surface_distance

    return surface_distance


@pytest.mark.parametrize("spacing", [(1, 1, 1), (3.0, 0.7, 1.3), (0.5, 2.0, 5.0)])
def test_surfel_area_table_matches_surface_distance(spacing):
    sdp = _sd_pkg()
    ref = sdp.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surfel_area_table(spacing), ref, rtol=0, atol=1e-12)


def test_neighbourhood_codes_single_voxel():
    m = np.zeros((1, 1, 1), bool)
    m[0, 0, 0] = True
    codes = neighbourhood_codes(m)
    # corner (a, b, c) sees the voxel at offset (1-a, 1-b, 1-c): bit 1 << (7 - (4(1-a) + 2(1-b) + (1-c)))
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                assert codes[a, b, c] == 1 << (7 - (4 * (1 - a) + 2 * (1 - b) + (1 - c)))


def test_single_voxels_shifted_by_hand():
    # One voxel each, 3 voxels apart along x with sx = 0.5 mm. Each surface has 8 corner surfels
    # of equal area; 4 corners are 2 voxels (1.0 mm) from the other surface, 4 are 3 voxels (1.5 mm).
    ref = np.zeros((3, 3, 8), bool)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = True
    pred[1, 1, 4] = True
    sd = compute_surface_distances(ref, pred, (1.0, 1.0, 0.5))
    assert sorted(sd.distances_ref_to_pred_mm.tolist()) == [1.0] * 4 + [1.5] * 4
    assert np.allclose(sd.areas_ref_mm2, sd.areas_ref_mm2[0])
    assert hd_percentile_mm(sd, 95) == 1.5
    assert hd_percentile_mm(sd, 50) == 1.0
    assert nsd(sd, 1.2) == pytest.approx(0.5)
    assert nsd(sd, 0.9) == 0.0
    assert nsd(sd, 1.5) == 1.0


def test_shifted_cubes_anisotropic_max_distance():
    # 3x3x3 cubes shifted by one voxel along z (2 mm). The reference's bottom face lies 2 mm below
    # the nearest predicted surfel (the prediction's bottom face); no surfel is farther.
    a = np.zeros((7, 6, 6), bool)
    a[1:4, 1:4, 1:4] = True
    b = np.zeros_like(a)
    b[2:5, 1:4, 1:4] = True
    sd = compute_surface_distances(a, b, (2.0, 1.0, 1.0))
    assert sd.distances_ref_to_pred_mm.max() == 2.0 and sd.distances_pred_to_ref_mm.max() == 2.0
    assert hd_percentile_mm(sd, 100) == 2.0
    assert nsd(sd, 2.0) == 1.0
    assert 0.0 < nsd(sd, 1.9) < 1.0


def test_identical_masks():
    a = np.zeros((5, 5, 5), bool)
    a[1:4, 2:4, 1:3] = True
    sd = compute_surface_distances(a, a, (1.2, 0.8, 3.0))
    assert hd_percentile_mm(sd, 95) == 0.0
    assert nsd(sd, 0.0) == 1.0


def test_empty_masks_give_inf_or_nan():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    b[1, 1, 1] = True
    sd = compute_surface_distances(a, b, (1, 1, 1))
    assert sd.ref_empty and not sd.pred_empty
    assert math.isinf(hd_percentile_mm(sd))
    assert nsd(sd, 1.0) == 0.0
    sd0 = compute_surface_distances(a, a, (1, 1, 1))
    assert math.isnan(nsd(sd0, 1.0))


def test_image_diagonal():
    assert image_diagonal_mm((4, 5, 6), (2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(64 + 25 + 9))


def test_bad_arguments():
    a = np.ones((2, 2, 2), bool)
    with pytest.raises(ValueError):
        compute_surface_distances(a, np.ones((2, 2, 3), bool), (1, 1, 1))
    with pytest.raises(ValueError):
        compute_surface_distances(a, a, (1, 0, 1))
    sd = compute_surface_distances(a, a, (1, 1, 1))
    with pytest.raises(ValueError):
        hd_percentile_mm(sd, 101)
    with pytest.raises(ValueError):
        nsd(sd, -1.0)


def _compare(sdp, ref, pred, spacing, tolerances):
    ours = compute_surface_distances(ref, pred, spacing)
    theirs = sdp.compute_surface_distances(ref, pred, spacing)
    for p in (95, 100, 50):
        assert abs(hd_percentile_mm(ours, p) - sdp.compute_robust_hausdorff(theirs, p)) <= 1e-6
    for t in tolerances:
        assert abs(nsd(ours, t) - sdp.compute_surface_dice_at_tolerance(theirs, t)) <= 1e-6


def test_agrees_with_surface_distance_totalsegmentator():
    from medseg.io import read_volume

    sdp = _sd_pkg()
    d = shared_path("totalsegmentator")
    ref = read_volume(d / "example_seg.nii.gz", is_label=True)
    pred = read_volume(d / "example_seg_fast.nii.gz", is_label=True)
    labels = sorted(set(np.unique(ref.array)) & set(np.unique(pred.array)) - {0})
    assert len(labels) >= 10
    for k in labels[::3]:
        _compare(sdp, ref.array == k, pred.array == k, ref.spacing_mm, (1.0, 3.0, 4.5))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.9, 0.6)])
def test_agrees_with_surface_distance_hippocampus_perturbed(spacing):
    from medseg.io import read_volume

    sdp = _sd_pkg()
    d = shared_path("hippocampus", "labelsTr")
    for name in ("hippocampus_001.nii.gz", "hippocampus_017.nii.gz"):
        lab = read_volume(d / name, is_label=True).array
        for k in (1, 2):
            ref = lab == k
            for pred in (ndimage.binary_dilation(ref, iterations=2), ndimage.binary_erosion(ref),
                         np.roll(ref, (1, -2, 1), axis=(0, 1, 2)), ref & (np.indices(ref.shape)[2] % 7 != 0)):
                _compare(sdp, ref, pred, spacing, (0.5, 1.0, 2.0))
