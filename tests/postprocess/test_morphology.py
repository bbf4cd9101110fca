"""Opening and closing with anisotropic ellipsoids, worked by hand and against uncropped scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.postprocess import binary_closing, binary_opening, ellipsoid


def test_ellipsoid_counts():
    se = ellipsoid(2.0, (1.0, 1.0, 2.0))
    # half-sizes (2, 2, 1): at dx = 0 the disc dz^2 + dy^2 <= 4 has 13 voxels; at dx = +-1 only the centre line
    assert se.shape == (5, 5, 3) and se.sum() == 15
    assert ellipsoid(1.5, (1.0, 1.0, 1.0)).sum() == 19  # 3x3x3 without its 8 corners (3 > 2.25)
    assert ellipsoid(1.5, (1.0, 1.0, 3.0)).shape == (3, 3, 1)  # flat across the coarse axis
    with pytest.raises(ConfigError):
        ellipsoid(0.0, (1.0, 1.0))


def test_closing_anisotropic_gaps():
    sp = (1.0, 1.0, 3.0)  # radius 1.5 mm reaches 1 voxel in z and y, none in x
    m = np.zeros((9, 9, 9), bool)
    m[2:7, 1:4, 2:7] = True
    m[2:7, 5:8, 2:7] = True  # 1-voxel gap along y at y = 4
    out = binary_closing(m, radius_mm=1.5, spacing_mm=sp)
    assert out[2:7, 1:8, 2:7].all() and out.sum() == 5 * 7 * 5
    m2 = np.zeros((9, 9, 9), bool)
    m2[2:7, 2:7, 1:4] = True
    m2[2:7, 2:7, 5:8] = True  # the same gap along x is 3 mm wide: stays open
    assert np.array_equal(binary_closing(m2, radius_mm=1.5, spacing_mm=sp), m2)
    iso = binary_closing(m2, radius_mm=1.5, spacing_mm=(1.0, 1.0, 1.0))  # 1 mm: the gap closes inside
    assert iso[2:7, 3:6, 4].all() and not iso[2, 2, 4]  # the ball has no corners, so the gap's edges stay


def test_opening_anisotropic_plate():
    plate = np.zeros((9, 9, 9), bool)
    plate[1:8, 1:8, 3:5] = True  # two voxels thick along x
    # isotropic 1 mm voxels: a 3-voxel ball does not fit in a 2-voxel plate
    assert binary_opening(plate, radius_mm=1.5, spacing_mm=(1.0, 1.0, 1.0)).sum() == 0
    # 3 mm along x: the element is flat across x, the plate survives except its rim corners
    out = binary_opening(plate, radius_mm=1.5, spacing_mm=(1.0, 1.0, 3.0))
    assert np.array_equal(out, plate)  # the 3x3 square element fits everywhere in a 7x7 square


def test_border_is_not_eroded():
    full = np.ones((6, 6, 6), bool)
    assert binary_opening(full, radius_mm=2, spacing_mm=(1, 1, 1)).all()
    assert binary_closing(full, radius_mm=2, spacing_mm=(1, 1, 1)).all()
    assert not ndimage.binary_closing(full, structure=ellipsoid(2, (1, 1, 1))).all()  # scipy's own loses the rim
    near = np.zeros((5, 7), bool)
    near[:, 1:4] = True  # one voxel away from the border at x = 0: closing does not glue it to the border
    assert np.array_equal(binary_closing(near, radius_mm=1, spacing_mm=(1, 1)), near)
    cut = np.zeros((7, 7), bool)
    cut[2:5, 0:3] = True  # cut by the border: opening keeps its face on the border
    assert np.array_equal(binary_opening(cut, radius_mm=1, spacing_mm=(1, 1)), cut & ~np.isin(
        np.arange(49).reshape(7, 7), [2 * 7 + 2, 4 * 7 + 2]))  # only the two inner corners go


@pytest.mark.parametrize("radius,spacing", [(1.0, (1.0, 1.0, 1.0)), (2.5, (2.0, 0.8, 1.0)), (3.0, (3.0, 1.0, 1.5))])
def test_cropping_matches_whole_array_scipy(radius, spacing):
    """Same result as scipy on the whole array edge-padded by a wide margin (no bounding-box crop)."""
    rng = np.random.default_rng(3)
    m = ndimage.binary_dilation(rng.random((24, 30, 26)) > 0.985, iterations=2)
    m[:, :, :2] |= rng.random((24, 30, 2)) > 0.5  # something touching the border
    se = ellipsoid(radius, spacing)
    w = 12
    big = np.pad(m, w, mode="edge")
    crop = (slice(w, -w),) * 3
    ref_open = ndimage.binary_dilation(ndimage.binary_erosion(big, se), se)[crop]
    ref_close = ndimage.binary_erosion(ndimage.binary_dilation(big, se), se)[crop]
    assert np.array_equal(binary_opening(m, radius_mm=radius, spacing_mm=spacing), ref_open)
    assert np.array_equal(binary_closing(m, radius_mm=radius, spacing_mm=spacing), ref_close)
