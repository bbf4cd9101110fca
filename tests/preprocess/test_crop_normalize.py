"""Crop/uncrop, normalisation and denoising."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import GeometryMismatchError
from medseg.preprocess import (
    CropBox,
    crop_to_foreground,
    ct_window,
    curvature_anisotropic_diffusion,
    gaussian,
    median,
    minmax,
    uncrop,
    zscore,
)
from medseg.volume import Volume


def _rot():
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))
    return q


# ---------------------------------------------------------------- crop
def test_crop_box_origin_and_uncrop_round_trip():
    a = np.zeros((6, 7, 8), np.int16)
    a[2:4, 1:5, 3] = 7
    v = Volume(a, spacing_mm=(2.0, 1.0, 0.5), origin_mm=(1.0, 2.0, 3.0), direction=_rot())
    c, box = crop_to_foreground(v, margin_vox=1)
    assert box == CropBox((1, 0, 2), (5, 6, 5), (6, 7, 8))
    assert c.shape == (4, 6, 3)
    # voxel [0,0,0] of the crop lies where voxel (1, 0, 2) of the input lies
    assert np.allclose(c.affine @ [0, 0, 0, 1], v.affine @ [1, 0, 2, 1])
    assert np.allclose(c.affine @ [3, 5, 2, 1], v.affine @ [4, 5, 4, 1])
    back = uncrop(c, box)
    assert back.same_grid(v) and np.array_equal(back.array, a)
    back2 = uncrop(c.array, box)
    assert np.array_equal(back2, a)


def test_crop_threshold_mask_and_empty():
    a = np.full((4, 4, 4), -1000.0, np.float32)
    a[1, 1:3, 2] = 40.0
    v = Volume(a)
    _, box = crop_to_foreground(v, threshold=-500)
    assert box.start == (1, 1, 2) and box.stop == (2, 3, 3)
    m = np.zeros((4, 4, 4), bool)
    m[3, 3, 3] = True
    _, box = crop_to_foreground(v, mask=m)
    assert box.shape == (1, 1, 1)
    empty, box = crop_to_foreground(Volume(np.zeros((3, 3, 3))))
    assert empty.shape == (3, 3, 3) and box.start == (0, 0, 0)
    with pytest.raises(GeometryMismatchError):
        crop_to_foreground(v, mask=np.ones((2, 2, 2)))
    with pytest.raises(GeometryMismatchError):
        uncrop(np.zeros((2, 2, 2)), CropBox((0, 0, 0), (1, 1, 1), (3, 3, 3)))


# ---------------------------------------------------------------- normalisation
def test_zscore_with_and_without_mask():
    a = np.array([1, 2, 3, 4, 100, 100], np.float32).reshape(1, 2, 3)
    out = zscore(Volume(a)).array
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(0, abs=1e-6) and out.std() == pytest.approx(1, abs=1e-5)
    mask = a < 50
    mo = zscore(Volume(a), mask=mask).array
    vals = np.array([1, 2, 3, 4.0])
    assert mo[mask] == pytest.approx((vals - vals.mean()) / vals.std(), abs=1e-6)
    assert np.all(mo[~mask] == 0)
    const = zscore(Volume(np.full((2, 2, 2), 5.0))).array
    assert np.all(const == 0)


def test_minmax_percentile_clip():
    a = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = minmax(Volume(a), lower_percentile=1, upper_percentile=99).array
    lo, hi = np.percentile(a, [1, 99])  # 9.99 and 989.01 by linear interpolation
    assert out.min() == 0 and out.max() == 1
    assert out.ravel()[500] == pytest.approx((500 - lo) / (hi - lo), abs=1e-6)
    with pytest.raises(ValueError):
        minmax(Volume(a), lower_percentile=50, upper_percentile=10)


def test_ct_window_presets_and_explicit():
    a = np.array([-1350, -600, 150, 2000], np.int16).reshape(1, 1, 4)
    lung = ct_window(Volume(a), preset="lung").array.ravel()  # [-1350, 150]
    assert lung.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
    same = ct_window(Volume(a), center=-600, width=1500).array
    assert np.array_equal(same.ravel(), lung)
    with pytest.raises(ValueError, match="preset"):
        ct_window(Volume(a), preset="kidney-ish")
    with pytest.raises(ValueError):
        ct_window(Volume(a.astype(np.uint8), is_label=True), preset="lung")


# ---------------------------------------------------------------- denoising
def test_gaussian_respects_spacing():
    a = np.zeros((21, 21, 21), np.float32)
    a[10, 10, 10] = 1.0
    v = Volume(a, spacing_mm=(2.0, 1.0, 1.0))
    out = gaussian(v, sigma_mm=2.0).array
    assert out.sum() == pytest.approx(1.0, rel=1e-2)
    # variance along each axis in mm^2 equals sigma^2 = 4 (z has 2 mm voxels: 1 voxel^2)
    idx = np.arange(21) - 10
    var_z = (out.sum(axis=(1, 2)) * idx**2).sum() / out.sum() * 2.0**2
    var_x = (out.sum(axis=(0, 1)) * idx**2).sum() / out.sum() * 1.0**2
    assert var_z == pytest.approx(4.0, rel=0.1) and var_x == pytest.approx(4.0, rel=0.1)


def test_median_removes_salt_noise(rng):
    a = np.full((9, 9, 9), 10, np.int16)
    a[4, 4, 4] = 1000
    out = median(Volume(a), radius_vox=1).array
    assert out.dtype == np.int16 and np.all(out == 10)
    # compare with scipy on a random array (same box footprint)
    import scipy.ndimage as ndi

    r = rng.normal(size=(8, 9, 10)).astype(np.float32)
    ours = median(Volume(r), radius_vox=(1, 2, 1)).array
    ref = ndi.median_filter(r, size=(3, 5, 3), mode="nearest")
    assert np.allclose(ours[1:-1, 2:-2, 1:-1], ref[1:-1, 2:-2, 1:-1])


def test_curvature_diffusion_smooths_noise_keeps_edge(rng):
    a = np.zeros((16, 16, 16), np.float32)
    a[:, :, 8:] = 100.0
    noisy = a + rng.normal(scale=5.0, size=a.shape).astype(np.float32)
    out = curvature_anisotropic_diffusion(Volume(noisy), iterations=10, conductance=3.0).array
    flat = (slice(2, -2), slice(2, -2), slice(1, 5))
    assert out[flat].std() < 0.6 * noisy[flat].std()  # noise reduced in flat regions
    assert out[:, :, 10:].mean() - out[:, :, :6].mean() > 90  # edge contrast kept
    with pytest.raises(ValueError, match="time_step"):
        curvature_anisotropic_diffusion(Volume(noisy), time_step_mm=0.5)


# ---------------------------------------------------------------- plan normalisation methods
def test_normalize_array_every_scheme_by_hand():
    from medseg.preprocess.normalize import normalize_array

    x = np.array([0.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(normalize_array(x, "zscore"), (x - 1.0) / np.sqrt(1.5), rtol=1e-6)
    nz = [0.0, 0.0, -1.0, 1.0]           # mean 2, std 1 over the non-zero voxels; zeros stay 0
    assert normalize_array(x, "zscore_nonzero").tolist() == nz
    assert normalize_array(x, {"scheme": "zscore", "mask_nonzero": True}).tolist() == nz
    unmasked = normalize_array(x, {"scheme": "zscore", "mask_nonzero": False})
    assert unmasked.tolist() == normalize_array(x, "zscore").tolist()
    assert normalize_array(np.zeros(4), "zscore_nonzero").tolist() == [0.0] * 4     # empty mask: all 0
    ct = {"scheme": "ct", "clip": [-100, 300], "mean": 80, "std": 50}
    np.testing.assert_allclose(normalize_array(np.array([-500.0, 0.0, 80.0, 1000.0]), ct), [-3.6, -1.6, 0.0, 4.4],
                               rtol=1e-6)
    a = np.arange(101, dtype=np.float64)
    mm = normalize_array(a, {"scheme": "minmax", "lower_percentile": 10, "upper_percentile": 90})
    assert mm[:11].tolist() == [0.0] * 11 and mm[90:].tolist() == [1.0] * 11 and mm[50] == pytest.approx(0.5)
    w = normalize_array(np.array([-1350.0, -600.0, 150.0]), {"scheme": "ct_window", "preset": "lung"})
    assert w.tolist() == pytest.approx([0.0, 0.5, 1.0])
    none = normalize_array(np.array([1, 2], np.int16), "none")
    assert none.dtype == np.float32 and none.tolist() == [1.0, 2.0]
    for out in (normalize_array(x, m) for m in ("zscore", ct, "none")):
        assert out.dtype == np.float32


def test_normalize_array_is_the_volume_normalisation(rng):
    """The Volume functions and the plan methods are one code path: the same voxels."""
    from medseg.preprocess.normalize import normalize_array

    a = rng.normal(100, 30, size=(6, 7, 8)).astype(np.float32)
    a[:2] = 0
    v = Volume(a)
    assert np.array_equal(normalize_array(a, "zscore_nonzero"), zscore(v, mask_nonzero=True).array)
    assert np.array_equal(normalize_array(a, {"scheme": "minmax"}), minmax(v).array)
    assert np.array_equal(normalize_array(a, {"scheme": "ct_window", "center": 50, "width": 100}),
                          ct_window(v, center=50, width=100).array)


def test_normalize_channels_and_bad_methods():
    from medseg.preprocess.normalize import method_spec, normalize_channels

    x = np.array([[[[-500.0, 0.0, 80.0, 1000.0]]]], dtype=np.float32)
    two = normalize_channels(np.stack([x[0], x[0]]), ["none", {"scheme": "ct", "clip": [-100, 300], "mean": 80,
                                                               "std": 50}])
    np.testing.assert_allclose(two[0].ravel(), x.ravel())
    np.testing.assert_allclose(two[1].ravel(), [-3.6, -1.6, 0.0, 4.4], rtol=1e-6)
    with pytest.raises(ValueError, match="2 methods for 1 channel"):
        normalize_channels(x, ["none", "zscore"])
    for bad, why in [("zscroe", "not one of"), ({"scheme": "ct"}, "needs clip"),
                     ({"scheme": "ct", "clip": [3, 1], "mean": 0, "std": 1}, "low < high"),
                     ({"scheme": "zscore", "mask": True}, "takes no mask"),
                     ({"scheme": "minmax", "lower_percentile": 60, "upper_percentile": 40}, "percentile"),
                     ({"scheme": "ct_window", "preset": "kidney-ish"}, "preset"), (3, "scheme name")]:
        with pytest.raises(ValueError, match=why):
            method_spec(bad)
