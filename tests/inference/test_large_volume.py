"""Large volumes (issue 18): the class probabilities go back to the input grid slab by slab.

The slab-wise inversion (:func:`medseg.preprocess.invert.invert_probabilities`) must give exactly the
labels and probabilities of resampling whole probability maps (the reference path, written out
below with whole-array resampling), agree with an independent computation by scipy, and need a
label map plus a slab of memory instead of K float32 maps of the input grid.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.predictor import Predictor
from medseg.preprocess.crop import CropBox
from medseg.preprocess.grid import Grid, index_map, spacing_grid
from medseg.preprocess.invert import invert_probabilities, same_grid, to_input_grid
from medseg.preprocess.plan import Prepared
from medseg.preprocess.resample import resample_array_to_grid
from medseg.volume import Volume
from tests.inference.helpers import blob_image, make_bundle

LPS = np.diag([-1.0, -1.0, 1.0])


def _random_probs(shape, k: int, seed: int) -> np.ndarray:
    """Smooth random class probabilities (K, *shape) float32 summing to 1 (softmax of smoothed noise)."""
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 6 for _ in range(k)])
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def _case(crop: bool, *, k: int = 3, seed: int = 0):
    """Model-grid probabilities and the Prepared / target grids of an anisotropic, LPS-oriented input."""
    target = Grid((23, 30, 27), (2.2, 0.7, 0.9), (4.0, -7.5, 2.25), LPS)
    box = CropBox((3, 4, 5), (20, 27, 25), target.shape) if crop else None
    if box is not None:
        origin = np.asarray(target.origin_mm) + box.offset_mm(target.spacing_mm, target.direction)
        cropped = Grid(box.shape, target.spacing_mm, tuple(origin.tolist()), target.direction)
    else:
        cropped = target
    pre = spacing_grid(cropped, (1.0, 1.0, 1.0))
    probs = _random_probs(pre.shape, k, seed)
    return probs, Prepared(np.zeros((1, *pre.shape), np.float32), pre, box, cropped), target


def _whole_maps(probs, prepared: Prepared, target: Grid) -> np.ndarray:
    """The reference path: every class map resampled whole onto the cropped grid, then the crop undone."""
    if same_grid(prepared.grid, prepared.cropped):
        on_crop = probs
    else:
        on_crop = np.stack([resample_array_to_grid(probs[k], prepared.grid, prepared.cropped, order="linear",
                                                   fill=1.0 if k == 0 else 0.0) for k in range(len(probs))])
    if prepared.crop is None:
        return on_crop
    full = np.zeros((len(probs), *target.shape), np.float32)
    full[0] = 1.0
    full[(slice(None), *prepared.crop.slices)] = on_crop
    return full


def _scipy_maps(probs, prepared: Prepared, target: Grid) -> np.ndarray:
    """Independent: scipy's trilinear interpolation at every target voxel mapped through physical space
    (edge voxels repeated up to half a voxel out, fill beyond), background 1 outside the crop box."""
    m = index_map(prepared.grid, prepared.cropped)
    idx = np.indices(prepared.cropped.shape).reshape(3, -1).astype(np.float64)
    pos = m[:3, :3] @ idx + m[:3, 3:4]
    n = np.asarray(prepared.grid.shape, dtype=np.float64)[:, None]
    outside = np.any((pos < -0.5 - 1e-6) | (pos > n - 0.5 + 1e-6), axis=0)
    out = np.zeros((len(probs), *target.shape), np.float64)
    out[0] = 1.0
    box = prepared.crop.slices if prepared.crop is not None else (slice(None),) * 3
    for k, p in enumerate(probs):
        v = ndimage.map_coordinates(p.astype(np.float64), pos, order=1, mode="nearest")
        v[outside] = 1.0 if k == 0 else 0.0
        out[(k, *box)] = v.reshape(prepared.cropped.shape)
    return out


@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("slab_bytes", [1, 40_000, 1 << 30])   # 4 rows at a time, a few slabs, one slab
def test_slab_inversion_equals_whole_maps_and_scipy(crop, slab_bytes):
    probs, prepared, target = _case(crop, seed=int(crop))
    ref = _whole_maps(probs, prepared, target)
    full, labels = invert_probabilities(probs, prepared, target, label_dtype=np.uint8, slab_bytes=slab_bytes)
    np.testing.assert_array_equal(full, ref)                       # bitwise: same passes, same order, less data
    np.testing.assert_array_equal(labels, np.argmax(ref, axis=0).astype(np.uint8))
    none, only = invert_probabilities(probs, prepared, target, keep_probabilities=False, label_dtype=np.uint8,
                                      slab_bytes=slab_bytes)
    assert none is None
    np.testing.assert_array_equal(only, labels)
    np.testing.assert_allclose(full, _scipy_maps(probs, prepared, target), atol=2e-6)
    if crop:
        outside = np.ones(target.shape, bool)
        outside[prepared.crop.slices] = False
        assert np.all(labels[outside] == 0) and np.all(full[0][outside] == 1.0)


def test_identity_inversion_is_the_argmax_and_keeps_the_array():
    probs = _random_probs((9, 10, 11), 4, 3)
    g = Grid((9, 10, 11), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    prepared = Prepared(np.zeros((1, *g.shape), np.float32), g, None, g)
    full, labels = invert_probabilities(probs, prepared, g, label_dtype=np.uint16, slab_bytes=1)
    assert full is probs
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, np.argmax(probs, axis=0))
    assert to_input_grid(probs, prepared, g) is probs


@pytest.mark.parametrize("kernel", ["linear", "cubic", "nearest"])
@pytest.mark.parametrize("direction", ["same", "flipped", "permuted"])
def test_rows_of_a_resampling_are_bitwise_the_rows_of_the_whole(kernel, direction):
    """``rows=`` computes only some rows of the first output axis, from only the input they read."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(13, 17, 11)).astype(np.float32)
    src = Grid(a.shape, (1.3, 0.8, 1.1), (1.0, 2.0, 3.0), np.eye(3))
    if direction == "same":
        dst = Grid((21, 9, 11), (0.9, 1.5, 1.1), (0.7, 2.2, 3.0), np.eye(3))    # x axis: identity pass
    elif direction == "flipped":
        dst = Grid((21, 9, 14), (0.9, 1.5, 0.95), (16.0, 14.0, 3.2), np.diag([-1.0, -1.0, 1.0]))
    else:   # dst axis 0 runs along src x: the rows cut src axis 2
        perm = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        dst = Grid((14, 9, 21), (0.95, 1.5, 0.9), (3.2, 2.2, 0.7), perm)
    whole = resample_array_to_grid(a, src, dst, order=kernel, fill=-5.0)
    for r0, r1 in [(0, 4), (3, 4), (5, 12), (dst.shape[0] - 2, dst.shape[0]), (0, dst.shape[0])]:
        part = resample_array_to_grid(a, src, dst, order=kernel, fill=-5.0, rows=slice(r0, r1))
        np.testing.assert_array_equal(part, whole[r0:r1])
    with pytest.raises(ValueError, match="step 1"):
        resample_array_to_grid(a, src, dst, rows=slice(0, 4, 2))


def _traced_peak(fn) -> tuple[int, object]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


def test_labels_alone_need_a_label_map_plus_a_slab():
    """Memory (numpy's allocations, traced): labels without probabilities cost the uint8 label map and
    about one slab, not the K float32 maps plus the int64 argmax of the whole-map path (K * 4 + 8 bytes
    a voxel)."""
    target = Grid((60, 96, 96), (1.6, 0.55, 0.55), (0.0, 0.0, 0.0), LPS)
    pre = spacing_grid(target, (1.0, 1.0, 1.0))
    probs = _random_probs(pre.shape, 3, 11)
    prepared = Prepared(np.zeros((1, *pre.shape), np.float32), pre, None, target)
    n = int(np.prod(target.shape))
    slab = 1 << 18
    peak, (_, labels) = _traced_peak(lambda: invert_probabilities(probs, prepared, target, keep_probabilities=False,
                                                                  label_dtype=np.uint8, slab_bytes=slab))
    # label map (1 byte a voxel) + the slab (slab_bytes) + its int64 argmax (2/3 of it for K = 3) + the resampling
    # passes of one class map of the slab (each at most a third of the slab, two alive) + taps
    bound = n + slab * (1 + 2 / 3 + 2 / 3) + (1 << 20)
    assert peak <= bound, (peak, bound)
    whole_peak, full = _traced_peak(lambda: to_input_grid(probs, prepared, target))
    assert whole_peak >= 3 * 4 * n        # the probabilities on the input grid, for comparison
    assert peak < (3 * 4 + 8) * n / 4    # a quarter of what the K maps and their int64 argmax took
    np.testing.assert_array_equal(labels, np.argmax(full, axis=0))


def test_predictor_labels_are_the_argmax_of_the_saved_probabilities(tmp_path):
    """End to end through a model: resampled (anisotropic input) and cropped (nonzero plan) cases give the
    argmax of the probabilities that --save-probabilities writes, with and without asking for them."""
    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16), seed=4)
    img = blob_image((12, 22, 18), seed=8)
    vol = Volume(img, spacing_mm=(1.7, 0.8, 0.9), origin_mm=(1.0, -2.0, 3.0), direction=LPS)
    p = Predictor.from_bundle(bundle, postprocess=False)
    with_probs = p.predict_volume(vol, probabilities=True)
    labels_only = p.predict_volume(vol)
    assert labels_only.probabilities is None
    np.testing.assert_array_equal(labels_only.label.array, with_probs.label.array)
    np.testing.assert_array_equal(with_probs.label.array, np.argmax(with_probs.probabilities, axis=0))
    # the probabilities are the whole-map resampling of the model-grid probabilities
    from medseg.inference.prepare import preprocess, stack_channels
    from medseg.preprocess.grid import grid_of

    arr, ref = stack_channels([vol], expected=1)
    prepared = preprocess(arr, grid_of(ref), p.plan)
    model_probs = p._probabilities(prepared.image, prepared.grid.spacing_mm)
    np.testing.assert_array_equal(with_probs.probabilities, _whole_maps(model_probs, prepared, grid_of(ref)))


# ----------------------------------------------------------------------------- the forward: in place, chunk by chunk
@pytest.mark.parametrize("shape", [(1, 3, 37, 41, 29), (2, 4, 17, 1, 33), (1, 2, 5, 7, 9)])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_activation_in_place_by_slabs_is_bitwise_the_whole_tensor_call(shape, activation):
    import torch

    from medseg.inference.tta import activate_, to_probabilities

    torch.manual_seed(0)
    x = torch.randn(shape) * 5
    want = to_probabilities(x, activation)
    for chunk in (1, 100, 5000, 1 << 22):     # 1 voxel plane .. the whole tensor at once
        got = x.clone()
        assert activate_(got, activation, chunk_voxels=chunk) is got
        assert torch.equal(got, want), chunk


def test_flipped_add_by_slabs_is_bitwise_the_flipped_copy():
    import torch

    from medseg.inference.tta import add_flipped_

    torch.manual_seed(1)
    t, p = torch.randn(1, 3, 23, 9, 14), torch.randn(1, 3, 23, 9, 14)
    for dims in [(), (2,), (3,), (2, 4), (2, 3, 4)]:
        want = t + (torch.flip(p, dims) if dims else p)
        for chunk in (1, 333, 1 << 22):
            assert torch.equal(add_flipped_(t.clone(), p, dims, chunk_voxels=chunk), want), (dims, chunk)


def test_mirror_tta_in_place_equals_the_plain_mean_and_leaves_the_image_alone():
    """The mean of softmax(predict(flip(x))) flipped back, written out plainly, equals mirror_tta bitwise; a
    predict that returns its input (or the image) is not written over."""
    import torch

    from medseg.inference.tta import mirror_subsets, mirror_tta

    torch.manual_seed(2)
    x = torch.randn(1, 2, 12, 10, 8)
    w = torch.randn(3, 2)

    def predict(t):   # a fresh (1, 3, ...) tensor that depends on position (not flip-invariant)
        ramp = torch.linspace(-1, 1, t.shape[2])[None, None, :, None, None]
        return torch.einsum("kc,ncdhw->nkdhw", w, t) + ramp

    want = None
    for flip in mirror_subsets((0, 1, 2)):
        dims = [2 + a for a in flip]
        p = torch.softmax(predict(torch.flip(x, dims) if dims else x), dim=1)
        p = torch.flip(p, dims) if dims else p
        want = p if want is None else want + p
    want /= 8
    assert torch.equal(mirror_tta(predict, x, axes=(0, 1, 2)), want)
    before = x.clone()
    ident = mirror_tta(lambda t: t, x, axes=(1,), activation="softmax")
    assert torch.equal(x, before)
    assert torch.equal(ident, torch.softmax(x, dim=1))


# ----------------------------------------------------------------------------- preprocessing without extra copies
def test_prefilter_in_place_equals_filtering_into_new_arrays():
    from medseg.preprocess.interp import prefilter_bspline

    rng = np.random.default_rng(3)
    a = (rng.normal(size=(13, 17, 11)) * 100).astype(np.float32)
    before = a.copy()
    for axes in [(0, 1, 2), (1, 2), (0,)]:
        want = a
        for ax in axes:
            want = ndimage.spline_filter1d(want, order=3, axis=ax, mode="mirror", output=np.float32)
        np.testing.assert_array_equal(prefilter_bspline(a, axes), want)
        np.testing.assert_array_equal(prefilter_bspline(a.astype(np.int16), axes),
                                      prefilter_bspline(a.astype(np.int16).astype(np.float32), axes))
    np.testing.assert_array_equal(a, before)


def test_chunked_mean_std_is_numpys_to_float32():
    from medseg.preprocess.normalize import mean_std

    rng = np.random.default_rng(4)
    v = (rng.normal(300.0, 80.0, size=1_000_003)).astype(np.float32)
    m, s = mean_std(v, chunk=4096)
    v64 = v.astype(np.float64)
    assert m == pytest.approx(v64.mean(), rel=1e-13) and s == pytest.approx(v64.std(), rel=1e-13)
    assert np.float32(m) == np.float32(v64.mean()) and np.float32(s) == np.float32(v64.std())
    assert mean_std(v[:1000]) == (float(v64[:1000].mean()), float(v64[:1000].std()))   # small: numpy's own


@pytest.mark.parametrize("plan", [
    {"spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore"},                                   # cubic
    {"spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore", "resample": {"order": "linear"}},
    {"spacing_mm": [1.7, 0.8, 0.9], "normalization": "zscore_nonzero", "crop": "nonzero"},         # not resampled
    {"target_spacing_mm": [1.0, 1.0, 1.0], "normalization": {"scheme": "minmax"}},                  # older form
])
def test_an_int16_image_is_preprocessed_without_a_float32_copy_to_the_same_values(plan):
    from medseg.inference.prepare import preprocess, stack_channels
    from medseg.preprocess.grid import grid_of

    rng = np.random.default_rng(5)
    img = np.zeros((12, 22, 18), np.int16)
    img[1:11, 2:20, 1:17] = rng.integers(-1000, 1500, size=(10, 18, 16))
    vol = Volume(img, spacing_mm=(1.7, 0.8, 0.9), direction=LPS)
    view, _ = stack_channels([vol], expected=1, copy=False)
    assert view.dtype == np.int16 and np.shares_memory(view, img)
    f32, _ = stack_channels([vol], expected=1)
    assert f32.dtype == np.float32
    a, b = preprocess(view, grid_of(vol), plan), preprocess(f32, grid_of(vol), plan)
    assert a.image.dtype == np.float32
    np.testing.assert_array_equal(a.image, b.image)
    assert same_grid(a.grid, b.grid) and a.crop == b.crop
    np.testing.assert_array_equal(img, vol.array)    # the input is not modified
    f64 = Volume(img.astype(np.float64), spacing_mm=(1.7, 0.8, 0.9))
    assert stack_channels([f64], expected=1, copy=False)[0].dtype == np.float32   # not exact: converted


def test_preprocessing_an_int16_ct_needs_about_one_float32_copy_of_it():
    """Traced numpy memory of preprocessing (cubic resampling to 1 mm, z-score) an int16 volume: the float32
    B-spline coefficients of the input (4 bytes a voxel) plus passes on the smaller model grid; no float32
    stack of the input, no second coefficient copy, no float64 copies for the statistics."""
    from medseg.inference.prepare import preprocess, stack_channels
    from medseg.preprocess.grid import grid_of

    rng = np.random.default_rng(6)
    img = rng.integers(-1000, 1500, size=(40, 128, 128)).astype(np.int16)
    vol = Volume(img, spacing_mm=(1.12, 0.6, 0.7))
    plan = {"spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore"}
    n = img.size
    peak, prepared = _traced_peak(lambda: preprocess(stack_channels([vol], expected=1, copy=False)[0],
                                                     grid_of(vol), plan))
    m = int(np.prod(prepared.grid.shape))       # about 0.47 n
    # at most what filtering the whole input took: its coefficients 4n + the first (shrinking, y: 0.6) pass's
    # output and its cubic work array, 4 * 0.6n each; the passes now filter slab by slab (far less, see
    # test_cubic_resampling_keeps_no_float32_copy_of_the_input), so on this small volume the z-score's
    # statistics, float64 copies of the model grid (m, about 0.47 n), make the peak
    bound = 4 * n + 2 * int(4 * 0.6 * n) + (1 << 20)
    assert peak <= bound, (peak, bound, m)
    f32_peak, _ = _traced_peak(lambda: preprocess(stack_channels([vol], expected=1)[0], grid_of(vol), plan))
    assert f32_peak > peak + 3.9 * n        # the float32 stack (4 bytes a voxel) the old way made first


# ----------------------------------------------------------------------------- preprocessing: cubic passes by slabs
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_spline_taps_by_slabs_are_bitwise_the_filtered_whole(axis, dtype, threads):
    """A cubic pass filters and resamples slab by slab: bitwise the values of filtering the whole array
    along the axis (scipy's spline_filter1d, mirror) and resampling it after."""
    from medseg.preprocess.interp import apply_taps, make_taps, prefilter_bspline, spline_taps

    rng = np.random.default_rng(axis)
    a = (rng.normal(size=(13, 17, 11)) * 300).astype(dtype)
    n_out = {0: 20, 1: 9, 2: 15}[axis]
    taps = make_taps(np.linspace(-0.3, a.shape[axis] - 0.8, n_out), a.shape[axis], "cubic")
    whole = apply_taps(prefilter_bspline(a, (axis,)), axis, taps, threads=1)
    for slab_bytes in (1, 700, 1 << 30):          # one row at a time, a few rows, one slab
        np.testing.assert_array_equal(spline_taps(a, axis, taps, threads=threads, slab_bytes=slab_bytes), whole)


def test_cubic_resampling_keeps_no_float32_copy_of_the_input():
    """An int16 CT shrunk with cubic kernels: the first pass is filtered slab by slab, so the peak is the
    passes' outputs plus slabs, below the float32 copy of the input that filtering it whole needed."""
    from medseg.preprocess.resample import resample_array_to_grid

    rng = np.random.default_rng(3)
    a = rng.integers(-1000, 1000, size=(32, 128, 128)).astype(np.int16)
    src = Grid(a.shape, (1.0, 0.5, 0.5), (0.0, 0.0, 0.0), LPS)
    dst = spacing_grid(src, (1.0, 1.0, 1.0))          # y and x halved: passes of 2 and 1 MiB
    peak, out = _traced_peak(lambda: resample_array_to_grid(a, src, dst, order="cubic", threads=1))
    assert out.shape == (32, 64, 64)
    assert peak < 4 * a.size, (peak, 4 * a.size)     # the float32 copy alone would be 4 * a.size
    ref = ndimage.zoom(a.astype(np.float64), (1.0, 0.5, 0.5), order=3, mode="mirror", grid_mode=True)
    assert np.abs(out - ref).max() < 1e-2           # values of +-1000: float32 rounding
