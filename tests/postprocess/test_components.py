"""Components, small-component removal and hole filling on hand-worked arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.postprocess import fill_holes, keep_largest_component, remove_small_components
from medseg.postprocess.components import bounding_box


def test_keep_largest_3d_and_connectivity():
    m = np.zeros((4, 5, 5), bool)
    m[0, 4, 0:3] = True         # 3 voxels
    m[2:4, 2:4, 2:4] = True     # 8 voxels
    m[1, 1, 3] = True           # touches the block only along an edge: (1,1,3)-(2,2,3)
    out = keep_largest_component(m)
    assert out.sum() == 8 and out[2:4, 2:4, 2:4].all() and not out[1, 1, 3]
    out26 = keep_largest_component(m, connectivity=3)  # edge neighbour now joins the block
    assert out26.sum() == 9 and out26[1, 1, 3]
    assert keep_largest_component(np.zeros((3, 3), bool)).sum() == 0
    # ties: the first component in C order
    assert keep_largest_component(np.array([1, 1, 0, 1, 1])).tolist() == [True, True, False, False, False]
    with pytest.raises(ConfigError):
        keep_largest_component(m, connectivity=4)


def test_remove_small_components_anisotropic():
    m = np.zeros((3, 6, 6), bool)
    m[0, 0, 0:3] = True          # 3 voxels x (2 * 1 * 1 mm3) = 6 mm3
    m[2, 2:5, 2:5] = True        # 9 voxels = 18 mm3
    m[1, 5, 5] = True            # 1 voxel = 2 mm3
    sp = (2.0, 1.0, 1.0)
    assert remove_small_components(m, min_volume_mm3=6.0, spacing_mm=sp).sum() == 12  # 6 mm3 kept (>=)
    assert remove_small_components(m, min_volume_mm3=6.1, spacing_mm=sp).sum() == 9
    assert remove_small_components(m, min_volume_mm3=0, spacing_mm=sp).sum() == 13
    assert remove_small_components(m, min_volume_mm3=100, spacing_mm=sp).sum() == 0
    with pytest.raises(ConfigError, match="spacing_mm"):
        remove_small_components(m, min_volume_mm3=1, spacing_mm=(1.0, 1.0))


def test_fill_holes_cavity_and_tube():
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    cube[2:5, 2:5, 2:5] = False  # closed 27-voxel cavity
    filled = fill_holes(cube)
    assert filled.sum() == 125 and filled[1:6, 1:6, 1:6].all()
    tube = np.zeros((5, 7, 7), bool)
    tube[:, 1:6, 1:6] = True
    tube[:, 3, 3] = False        # a 1-voxel channel through every slice, open at both ends
    assert fill_holes(tube).sum() == tube.sum()            # no 3D hole
    assert fill_holes(tube, slice_axis=0).sum() == 5 * 25  # a 2D hole in every z slice
    assert fill_holes(tube, slice_axis=1).sum() == tube.sum()  # cut along y the channel is a groove
    # a cavity touching the array border is not a hole
    edge = np.ones((4, 4), bool)
    edge[0, 1] = False
    assert fill_holes(edge).sum() == 15


def test_bounding_box():
    m = np.zeros((5, 6), bool)
    m[1, 2] = m[3, 4] = True
    assert bounding_box(m) == (slice(1, 4), slice(2, 5))
    assert bounding_box(m, margin=2) == (slice(0, 5), slice(0, 6))
    assert bounding_box(np.zeros((2, 2), bool)) is None


def test_component_sizes_in_chunks_equal_bincount():
    from medseg.postprocess.components import _component_sizes

    labels = np.random.default_rng(0).integers(0, 7, size=(5, 6, 7)).astype(np.int32)
    for chunk in (1, 13, 210, 1 << 22):
        want = np.bincount(labels.ravel(), minlength=7)
        np.testing.assert_array_equal(_component_sizes(labels, 6, chunk=chunk), want)
    np.testing.assert_array_equal(_component_sizes(labels, 9), np.bincount(labels.ravel(), minlength=10))


@pytest.mark.parametrize("step", [2, 3])     # 125,000 isolated voxels (int32 labels) / 39,304 (uint16)
def test_components_past_65535_fall_back_to_int32_labels(step):
    from scipy import ndimage

    from medseg.postprocess.components import _label, _structure

    mask = np.zeros((100, 100, 100), bool)
    mask[::step, ::step, ::step] = True
    mask[:4, :4, :4] = True                        # one larger component, the one to keep
    labels, n = _label(mask, _structure(3, 1))
    ref, n_ref = ndimage.label(mask)
    assert n == n_ref and labels.dtype == (np.uint16 if n_ref <= 65535 else np.int32)
    np.testing.assert_array_equal(labels, ref)
    want = mask & (ref == ref[0, 0, 0])
    np.testing.assert_array_equal(keep_largest_component(mask), want)
    np.testing.assert_array_equal(remove_small_components(mask, min_volume_mm3=2.0, spacing_mm=(1.0, 1.0, 1.0)), want)
