"""Resampling: hand-worked cases, physical-space correctness, and agreement with scipy/SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg.io import read_volume, write_volume
from medseg.preprocess import (
    Grid,
    grid_of,
    resample_array,
    resample_array_to_grid,
    resample_to_grid,
    resample_to_spacing,
    shape_grid,
    spacing_grid,
)
from medseg.volume import Volume
from tests.paths import shared_path


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    return q * np.sign(np.diag(r))[None, :]


def _linear_volume(shape, spacing, origin, direction, coef, const=2.0) -> Volume:
    g = Grid(shape, spacing, origin, direction)
    vals = g.voxel_centres_mm() @ np.asarray(coef) + const
    return Volume(vals.astype(np.float32), spacing, origin, direction)


def test_hand_worked_1d_upsampling():
    # two voxels 0 and 10 at 2 mm -> four at 1 mm; centres at input index -0.25, 0.25, 0.75, 1.25
    v = Volume(np.array([0.0, 10.0], np.float32).reshape(1, 1, 2), spacing_mm=(1, 1, 2), origin_mm=(0, 0, 0))
    out = resample_to_spacing(v, (1, 1, 1))
    assert out.array.ravel().tolist() == pytest.approx([0.0, 2.5, 7.5, 10.0])
    assert out.spacing_mm == (1.0, 1.0, 1.0)
    # default direction: x -> R; first centre moves half an output voxel outwards: -0.5 mm
    assert out.origin_mm == pytest.approx((-0.5, 0.0, 0.0))
    near = resample_to_spacing(v, (1, 1, 1), order="nearest")
    assert near.array.ravel().tolist() == [0.0, 0.0, 10.0, 10.0]


def test_spacing_grid_preserves_field_of_view():
    g = Grid((7, 10, 13), (3.0, 0.8, 0.8), (1.0, 2.0, 3.0), _rotation(1))
    h = spacing_grid(g, (1.0, 1.1, 0.5))
    assert h.shape == (21, 7, 21)  # round(7*3/1), round(8/1.1), round(10.4/0.5)
    lo = lambda gr: gr.affine @ np.array([-0.5, -0.5, -0.5, 1.0])  # noqa: E731
    hi = lambda gr: gr.affine @ np.array([*(np.array(gr.shape) - 0.5), 1.0])  # noqa: E731
    assert np.allclose(lo(g), lo(h)) and np.allclose(hi(g), hi(h))


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_reproduces_linear_function_in_physical_space(seed):
    d = _rotation(seed)
    coef = np.array([0.3, -1.2, 0.5])
    v = _linear_volume((14, 18, 16), (2.5, 1.0, 0.7), (3.0, -4.0, 5.0), d, coef)
    out = resample_to_spacing(v, (1.1, 0.6, 0.9), anisotropy_threshold=10.0)
    expect = grid_of(out).voxel_centres_mm() @ coef + 2.0
    inner = (slice(2, -2),) * 3  # clamped edges (within half an input voxel) are not linear
    assert np.abs(out.array - expect)[inner].max() < 1e-3


def test_cubic_reproduces_linear_function_away_from_the_boundary():
    coef = np.array([0.7, 0.2, -0.4])
    v = _linear_volume((30, 30, 30), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), _rotation(3), coef)
    out = resample_to_spacing(v, (1.3, 1.3, 1.3), order="cubic")
    expect = grid_of(out).voxel_centres_mm() @ coef + 2.0
    inner = (slice(14, -14),) * 3  # mirror boundary effects decay by 0.27 per input voxel
    assert np.abs(out.array - expect)[inner].max() < 1e-3


def test_linear_and_cubic_equal_scipy_zoom_grid_mode(rng):
    a = rng.normal(size=(9, 12, 11)).astype(np.float32)
    v = Volume(a, spacing_mm=(2.0, 2.0, 2.0))
    lin = resample_to_spacing(v, (1.0, 1.0, 1.0), order="linear").array
    assert np.allclose(lin, ndi.zoom(a, 2, order=1, grid_mode=True, mode="nearest"), atol=1e-5)
    cub = resample_to_spacing(v, (1.0, 1.0, 1.0), order="cubic").array
    assert np.allclose(cub, ndi.zoom(a, 2, order=3, grid_mode=True, mode="mirror"), atol=1e-4)


def test_cubic_equals_map_coordinates_for_non_integer_factor(rng):
    a = rng.normal(size=(10, 9, 8)).astype(np.float64)
    v = Volume(a.astype(np.float32), spacing_mm=(1.7, 1.0, 2.3))
    out = resample_to_spacing(v, (1.0, 0.7, 1.0), order="cubic", anisotropy_threshold=10)
    m = np.linalg.solve(grid_of(v).affine, grid_of(out).affine)
    pos = [m[k, k] * np.arange(out.shape[k]) + m[k, 3] for k in range(3)]
    coords = np.stack(np.meshgrid(*pos, indexing="ij"))
    ref = ndi.map_coordinates(a, coords, order=3, mode="mirror")
    assert np.abs(out.array - ref).max() < 1e-4


def _sitk_resample(tmp_path, vol: Volume, ref: Volume, interp: str) -> np.ndarray:
    """Reference: SimpleITK reads both files (its own LPS handling) and resamples in physical space."""
    import SimpleITK as sitk

    write_volume(vol, tmp_path / "in.nii.gz")
    write_volume(ref, tmp_path / "ref.nii.gz")
    img = sitk.ReadImage(str(tmp_path / "in.nii.gz"), sitk.sitkFloat32)
    refimg = sitk.ReadImage(str(tmp_path / "ref.nii.gz"))
    kind = {"linear": sitk.sitkLinear, "cubic": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}[interp]
    return sitk.GetArrayFromImage(sitk.Resample(img, refimg, sitk.Transform(), kind, -99.0, sitk.sitkFloat32))


@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("oblique", [False, True])
def test_resample_to_grid_matches_simpleitk(tmp_path, rng, interp, oblique):
    a = ndi.gaussian_filter(rng.normal(size=(16, 20, 18)), 1.5).astype(np.float32) * 100
    flip = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], float)  # axes along S, A, L
    src = Volume(a, spacing_mm=(2.0, 1.2, 1.5), origin_mm=(10, -5, 3), direction=flip)
    d = _rotation(7) if oblique else np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # permuted axes
    centre = src.affine @ np.array([*(np.array(src.shape) - 1) / 2.0, 1.0])
    shape, spacing = np.array([14, 15, 16]), np.array([1.1, 1.3, 1.7])
    origin = centre[:3] - d @ (spacing * (shape - 1) / 2.0) + np.array([1.3, -0.4, 0.7])  # off-centre
    ref = Volume(np.zeros(tuple(shape), np.float32), spacing_mm=spacing, origin_mm=origin, direction=d)
    ours = resample_to_grid(src, ref, order=interp, fill=-99.0).array
    theirs = _sitk_resample(tmp_path, src, ref, interp)
    inside = (ours != -99) & (theirs != -99)
    assert inside.mean() > 0.3  # the grids overlap substantially
    # near the boundary both keep the points within half a voxel; disagreement there is at most
    # the voxels on the edge of "inside" (float rounding of the position)
    assert ((ours == -99) != (theirs == -99)).mean() < 0.01
    tol = 1e-3 * np.abs(a).max()
    assert np.abs(ours - theirs)[inside].max() < tol


def test_label_nearest_round_trip_is_exact(rng):
    lab = rng.integers(0, 4, size=(6, 7, 5)).astype(np.uint8)
    v = Volume(lab, spacing_mm=(2.0, 1.0, 3.0), origin_mm=(5, 6, 7), direction=_rotation(2), is_label=True)
    up = resample_to_spacing(v, (1.0, 0.5, 1.5), anisotropy_threshold=10)
    assert up.array.dtype == np.uint8 and up.shape == (12, 14, 10)
    back = resample_to_grid(up, v)
    assert np.array_equal(back.array, lab) and back.same_grid(v)


def test_per_label_linear_equals_onehot_argmax_reference(rng):
    lab = ndi.median_filter(rng.integers(0, 5, size=(12, 14, 13)), 3).astype(np.int16)
    v = Volume(lab, spacing_mm=(3.0, 3.0, 3.0), is_label=True)
    out = resample_to_spacing(v, (1.3, 1.3, 1.3), label_order="linear")
    probs = np.stack([ndi.zoom((lab == k).astype(np.float64), np.array(out.shape) / lab.shape, order=1,
                               grid_mode=True, mode="nearest") for k in range(5)])
    ref = np.argmax(probs, axis=0)
    differ = out.array != ref
    top2 = np.sort(probs, axis=0)[-2:]
    assert differ.mean() < 1e-3
    assert np.all(np.abs(top2[1] - top2[0])[differ] < 1e-5)  # only exact ties may differ
    assert out.array.dtype == np.int16


def test_anisotropic_out_of_plane_axis_uses_nearest():
    a = np.repeat(np.arange(5, dtype=np.float32)[:, None, None] * 10, 8, 1).repeat(8, 2)
    v = Volume(a, spacing_mm=(5.0, 1.0, 1.0))
    out = resample_to_spacing(v, (1.0, 1.0, 1.0))  # ratio 5 > 3: z gets nearest
    assert out.shape == (25, 8, 8)
    assert set(np.unique(out.array).tolist()) == {0.0, 10.0, 20.0, 30.0, 40.0}
    lin = resample_to_spacing(v, (1.0, 1.0, 1.0), anisotropic_order="linear")
    assert np.unique(lin.array).size > 5


def test_outside_points_get_fill():
    v = Volume(np.ones((4, 4, 4), np.float32))
    ref = Grid((4, 4, 8), (1, 1, 1), (0, 0, 0), v.direction)  # x extends 4 voxels past the end
    out = resample_to_grid(v, ref, fill=-5.0).array
    assert np.all(out[..., :4] == 1.0) and np.all(out[..., 4:] == -5.0)


def test_bad_order_is_rejected():
    v = Volume(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="order"):
        resample_to_spacing(v, (1, 1, 1), order="quadratic")
    with pytest.raises(ValueError, match="spacing"):
        resample_to_spacing(v, (1, 0, 1))


@pytest.mark.shared
def test_real_mri_matches_simpleitk(tmp_path):
    path = shared_path("hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    vol = read_volume(path)
    out = resample_to_spacing(vol, (0.7, 0.8, 0.6))
    theirs = _sitk_resample(tmp_path, vol, out, "linear")
    inside = theirs != -99.0
    assert inside.mean() > 0.95
    assert np.abs(out.array - theirs)[inside].max() < 1e-3 * float(np.abs(vol.array).max())


@pytest.mark.parametrize("order", ["linear", "cubic", "nearest"])
def test_same_spacing_returns_the_data_unchanged(rng, order):
    a = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    v = Volume(a, spacing_mm=(2.0, 1.0, 1.5), origin_mm=(1, 2, 3))
    out = resample_to_spacing(v, (2.0, 1.0, 1.5), order=order)
    assert out.same_grid(v) and np.array_equal(out.array, a)


# ---------------------------------------------------------------- array-level entry points
def test_resample_array_hand_worked_spacing_and_shape():
    a = np.array([0.0, 10.0], np.float32).reshape(1, 1, 2)
    # 2 mm -> 1 mm: output centres at input index -0.25, 0.25, 0.75, 1.25 (edge repeated within half a voxel)
    assert resample_array(a, (1, 1, 2), (1, 1, 1)).ravel().tolist() == pytest.approx([0.0, 2.5, 7.5, 10.0])
    # the same by target shape; three voxels: centres at (j + 0.5) * 2/3 - 0.5 = -1/6, 1/2, 7/6
    assert resample_array(a, (1, 1, 2), shape=(1, 1, 4)).ravel().tolist() == pytest.approx([0.0, 2.5, 7.5, 10.0])
    assert resample_array(a, (1, 1, 2), shape=(1, 1, 3)).ravel().tolist() == pytest.approx([0.0, 5.0, 10.0])
    assert resample_array(a, (1, 1, 2), shape=(1, 1, 3), order="nearest").ravel().tolist() == [0.0, 10.0, 10.0]
    lab = np.array([1, 2], np.uint8).reshape(1, 1, 2)
    out = resample_array(lab, (1, 1, 2), (1, 1, 1), is_label=True)
    assert out.dtype == np.uint8 and out.ravel().tolist() == [1, 1, 2, 2]


def test_resample_array_equals_scipy_zoom_grid_mode(rng):
    a = rng.normal(size=(9, 12, 11)).astype(np.float32)
    lin = resample_array(a, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), order="linear")
    assert lin.dtype == np.float32
    assert np.allclose(lin, ndi.zoom(a, 2, order=1, grid_mode=True, mode="nearest"), atol=1e-5)
    shape = (13, 7, 16)   # non-integer factors per axis, by shape
    zoom = np.array(shape) / np.array(a.shape)
    cub = resample_array(a, (1.0, 1.0, 1.0), shape=shape, order="cubic")
    assert cub.shape == shape
    assert np.allclose(cub, ndi.zoom(a, zoom, order=3, grid_mode=True, mode="mirror"), atol=1e-4)
    lin2 = resample_array(a, (1.0, 1.0, 1.0), shape=shape, order="linear")
    assert np.allclose(lin2, ndi.zoom(a, zoom, order=1, grid_mode=True, mode="nearest"), atol=1e-5)


def test_resample_array_matches_simpleitk(rng):
    import SimpleITK as sitk

    a = ndi.gaussian_filter(rng.normal(size=(12, 16, 14)), 1.0).astype(np.float32) * 100
    spacing, target = (2.5, 1.0, 1.3), (1.1, 0.8, 2.0)
    out = resample_array(a, spacing, target, order="linear", anisotropy_threshold=10)
    dst = spacing_grid(Grid(a.shape, spacing, (0, 0, 0), np.eye(3)), target)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing[::-1])
    ref = sitk.Image(list(dst.shape[::-1]), sitk.sitkFloat32)
    ref.SetSpacing(dst.spacing_mm[::-1])
    ref.SetOrigin(dst.origin_mm[::-1])
    theirs = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -99.0, sitk.sitkFloat32))
    inside = theirs != -99.0
    assert out.shape == dst.shape and inside.mean() > 0.9
    assert np.abs(out - theirs)[inside].max() < 1e-3 * np.abs(a).max()


def test_resample_array_is_the_volume_resampler(rng):
    """resample_to_spacing / resample_to_grid are the Volume forms: the same voxels, bit for bit."""
    a = rng.normal(size=(8, 11, 9)).astype(np.float32)
    lab = rng.integers(0, 3, size=a.shape).astype(np.uint8)
    kw = dict(spacing_mm=(3.0, 0.9, 1.1), origin_mm=(4.0, -2.0, 7.5), direction=_rotation(5))
    for order in ("linear", "cubic", "nearest"):
        want = resample_to_spacing(Volume(a, **kw), (1.0, 1.0, 1.0), order=order)
        got = resample_array(a, kw["spacing_mm"], (1.0, 1.0, 1.0), order=order)
        assert np.array_equal(got, want.array) and got.dtype == want.array.dtype
    for label_order in ("nearest", "linear"):
        want = resample_to_spacing(Volume(lab, **kw, is_label=True), (1.2, 1.2, 1.2), label_order=label_order)
        got = resample_array(lab, kw["spacing_mm"], (1.2, 1.2, 1.2), is_label=True, label_order=label_order)
        assert np.array_equal(got, want.array) and got.dtype == np.uint8
    src = Volume(a, **kw)
    ref = Grid((10, 10, 10), (1.0, 1.0, 1.0), (3.0, -1.0, 6.0), _rotation(6))
    want = resample_to_grid(src, ref, order="cubic", fill=-7.0)
    got = resample_array_to_grid(a, grid_of(src), ref, order="cubic", fill=-7.0)
    assert np.array_equal(got, want.array) and grid_of(want).shape == got.shape
    with pytest.raises(ValueError, match="shape"):
        resample_array_to_grid(a[1:], grid_of(src), ref)


def test_resample_array_channels_and_bad_arguments(rng):
    a = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample_array(a, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), order="cubic")
    assert out.shape == (2, 10, 6, 7)
    for c in range(2):
        assert np.array_equal(out[c], resample_array(a[c], (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), order="cubic"))
    with pytest.raises(ValueError, match="either"):
        resample_array(a[0], (1, 1, 1))
    with pytest.raises(ValueError, match="either"):
        resample_array(a[0], (1, 1, 1), (1, 1, 1), shape=(5, 6, 7))
    with pytest.raises(ValueError, match="shape"):
        resample_array(a[0], (1, 1, 1), shape=(5, 0, 7))
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        resample_array(a[0, 0], (1, 1, 1), (1, 1, 1))


def test_shape_grid_preserves_field_of_view():
    g = Grid((7, 10, 13), (3.0, 0.8, 0.8), (1.0, 2.0, 3.0), _rotation(1))
    h = shape_grid(g, (20, 9, 4))
    assert h.shape == (20, 9, 4) and h.spacing_mm == pytest.approx((21 / 20, 8 / 9, 10.4 / 4))
    lo = lambda gr: gr.affine @ np.array([-0.5, -0.5, -0.5, 1.0])  # noqa: E731
    hi = lambda gr: gr.affine @ np.array([*(np.array(gr.shape) - 0.5), 1.0])  # noqa: E731
    assert np.allclose(lo(g), lo(h)) and np.allclose(hi(g), hi(h))
    assert spacing_grid(g, (1.0, 1.1, 0.5)).to_dict() == shape_grid(g, (21, 7, 21)).to_dict()
