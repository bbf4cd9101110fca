"""Predictor: exact training preprocessing, outputs on the input grid, inversion geometry, bad bundles."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.bundle import load_bundle, save_weights
from medseg.errors import InputError
from medseg.inference.bundles import registered_bundles, resolve_bundle
from medseg.inference.predictor import Predictor
from medseg.inference.prepare import Prepared, to_input_grid
from medseg.io import read_volume, write_volume
from medseg.preprocess.grid import Grid, spacing_grid
from medseg.volume import Volume
from tests.inference.helpers import blob_image, make_bundle, oblique_lps_affine, save_nifti
from tests.paths import shared_path


def _reference_probs(bundle, image: np.ndarray) -> np.ndarray:
    """softmax(model(z-score(image))) by hand: one forward pass on the whole (patch-sized) image."""
    model, _ = load_bundle(bundle)
    x = image.astype(np.float64)
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)[None, None])
    return torch.softmax(logits, 1)[0].numpy()


def test_native_spacing_equals_hand_computation_and_keeps_the_oblique_grid(tmp_path):
    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16))
    aff = oblique_lps_affine(spacing=(1.0, 1.0, 1.0))
    img = blob_image((16, 16, 16))
    vol = read_volume(save_nifti(img, tmp_path / "x.nii.gz", aff), kind="image")
    pred = Predictor.from_bundle(bundle).predict_volume(vol, probabilities=True)
    ref = _reference_probs(bundle, img)
    np.testing.assert_allclose(pred.probabilities, ref, atol=2e-5)
    np.testing.assert_array_equal(pred.label.array, ref.argmax(0))
    assert pred.label.array.dtype == np.uint8 and pred.label.is_label
    assert pred.warnings == []
    # written and read back: the affine of the input to 1e-5, same shape
    out = read_volume(write_volume(pred.label, tmp_path / "p.nii.gz"))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)


def _sitk_bspline_z2(img: np.ndarray) -> np.ndarray:
    """(z, y, x) at 2 x 1 x 1 mm -> 1 mm by SimpleITK's cubic B-spline: 2 z slices per input slice, the
    field of view kept, so the first output centre lies 0.25 input voxels before the first input centre."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(img.astype(np.float32))   # sitk axes (x, y, z)
    src.SetSpacing((1.0, 1.0, 2.0))
    ref = sitk.Image(img.shape[2], img.shape[1], 2 * img.shape[0], sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 1.0))
    ref.SetOrigin((0.0, 0.0, -0.5))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkBSpline, float("nan"), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    assert np.isfinite(arr).all()   # every output centre is inside the input's field of view
    return arr


def test_per_window_tta_averages_logits_by_hand(tmp_path):
    """tta_mode="window" on a patch-sized image (one window): softmax of the mean of the flipped-back logits;
    the default mode averages the softmax of each flip instead. Different settings, different manifests."""
    from medseg.inference.cohort import run_params

    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16))
    img = blob_image((16, 16, 16), seed=2)
    vol = Volume(img, (1.0, 1.0, 1.0))
    model, _ = load_bundle(bundle)
    x = torch.from_numpy(((img.astype(np.float64) - img.mean()) / img.std()).astype(np.float32))[None, None]
    with torch.no_grad():
        logits = [model(x.flip(d)).flip(d) if d else model(x) for d in ((), (3,), (4,), (3, 4))]  # y, x flips
    want_window = torch.softmax(sum(logits) / 4, 1)[0].numpy()
    want_volume = (sum(torch.softmax(lg, 1) for lg in logits) / 4)[0].numpy()
    win = Predictor.from_bundle(bundle, tta_axes=(1, 2), tta_mode="window")
    vol_p = Predictor.from_bundle(bundle, tta_axes=(1, 2))
    np.testing.assert_allclose(win.predict_volume(vol, probabilities=True).probabilities, want_window, atol=2e-5)
    np.testing.assert_allclose(vol_p.predict_volume(vol, probabilities=True).probabilities, want_volume, atol=2e-5)
    assert run_params(win, save_probabilities=False, probability_dtype="float16")["tta_mode"] == "window"
    assert "tta_mode" not in run_params(vol_p, save_probabilities=False, probability_dtype="float16")
    with pytest.raises(InputError, match="TTA mode"):
        Predictor.from_bundle(bundle, tta_mode="slices")


def test_training_resample_case_image_like_simpleitk_label_nearest_by_hand():
    """The training plan resamples with medseg's resampler: image as SimpleITK's B-spline, label
    nearest (2 mm -> 1 mm: output slice j samples input position j/2 - 0.25, i.e. each slice twice)."""
    from medseg.preprocess.plan import resample_case

    img = blob_image((10, 16, 16), seed=5)
    lab = (np.arange(10)[:, None, None] % 3 * np.ones((1, 16, 16))).astype(np.uint8)
    got_img, got_lab = resample_case(img[None], lab, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert got_img.shape == (1, 20, 16, 16) and got_img.dtype == np.float32
    np.testing.assert_allclose(got_img[0], _sitk_bspline_z2(img), atol=1e-4 * np.abs(img).max())
    np.testing.assert_array_equal(got_lab, np.repeat(lab, 2, axis=0))
    same_img, same_lab = resample_case(img[None], lab, (1.005, 1.0, 1.0), (1.0, 1.0, 1.0))  # within 1 %: untouched
    assert np.shares_memory(same_img, img)
    assert same_lab is lab


def test_far_spacing_warns_resamples_like_training_and_comes_back(tmp_path, caplog):
    bundle = make_bundle(tmp_path / "b", patch=(20, 16, 16))
    img = blob_image((10, 16, 16), seed=3)

    aff = np.array([[0, 0, 1.0, 5], [0, 1.0, 0, -3], [2.0, 0, 0, 7], [0, 0, 0, 1]])
    vol = read_volume(save_nifti(img, tmp_path / "x.nii.gz", aff), kind="image")
    with caplog.at_level(logging.WARNING, logger="medseg.inference"):
        pred = Predictor.from_bundle(bundle).predict_volume(vol, probabilities=True)
    assert any("far from the model's training spacing" in r.getMessage() for r in caplog.records)
    assert pred.warnings and "resampled" in pred.warnings[0]
    # by hand: training's resampling to 1 mm computed by SimpleITK (cubic B-spline onto a grid built
    # here: 20 slices of 1 mm covering the same field of view), one pass, linear zoom back
    up = _sitk_bspline_z2(img)
    probs_1mm = _reference_probs(bundle, up)
    back = np.stack([ndimage.zoom(p, (0.5, 1.0, 1.0), order=1, mode="nearest", grid_mode=True) for p in probs_1mm])
    np.testing.assert_allclose(pred.probabilities, back, atol=1e-4)
    assert pred.label.shape == vol.shape
    np.testing.assert_allclose(pred.label.affine, vol.affine, atol=1e-6)


def _sphere_probs(grid: Grid, centre_mm, radius_mm: float) -> np.ndarray:
    idx = np.stack(np.indices(grid.shape), -1).reshape(-1, 3).astype(np.float64)
    aff = np.eye(4)
    aff[:3, :3] = grid.direction * np.asarray(grid.spacing_mm)[None, :]
    aff[:3, 3] = grid.origin_mm
    pts = idx @ aff[:3, :3].T + aff[:3, 3]
    d = np.linalg.norm(pts - np.asarray(centre_mm), axis=1).reshape(grid.shape)
    p1 = 1.0 / (1.0 + np.exp(-(radius_mm - d) / 0.7))
    return np.stack([1.0 - p1, p1]).astype(np.float32)


def test_inversion_puts_a_physical_sphere_back_in_place():
    """Probabilities of a sphere made on the model grid land on the oblique input grid where the
    sphere is in millimetres (independent check of origin, direction and spacing handling)."""
    aff = oblique_lps_affine(spacing=(2.5, 0.8, 1.2))
    from medseg.volume import affine_to_geometry

    sp, org, dirn = affine_to_geometry(aff)
    target = Grid((16, 40, 30), sp, org, dirn)
    pre = spacing_grid(target, (1.0, 1.0, 1.0))
    centre = (aff[:3, :3] @ np.array([8.0, 21.0, 14.0])) + aff[:3, 3]
    probs = _sphere_probs(pre, centre, 7.0)
    back = to_input_grid(probs, Prepared(np.zeros((1, *pre.shape), np.float32), pre, None, target), target)
    assert back.shape == (2, *target.shape)
    got = back.argmax(0)
    want = _sphere_probs(target, centre, 7.0).argmax(0)
    dice = 2 * np.sum(got & want) / (got.sum() + want.sum())
    assert dice > 0.97
    com_got = np.array(ndimage.center_of_mass(got))
    com_want = np.array(ndimage.center_of_mass(want))
    assert np.linalg.norm((com_got - com_want) * np.asarray(sp)) < 0.3   # mm


def test_dicom_series_prediction_lies_on_the_series_grid(tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    bundle = make_bundle(tmp_path / "b", patch=(40, 56, 40))
    vol = read_volume(folder, kind="image")
    pred = Predictor.from_bundle(bundle).predict_volume(vol)
    out = read_volume(write_volume(pred.label, tmp_path / "dicom_pred.nii.gz"))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-5)


def test_channels_must_match_the_model(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    v = Volume(blob_image((16, 16, 16)))
    p = Predictor.from_bundle(bundle)
    with pytest.raises(InputError, match="expects 1 input channel") as ei:
        p.predict_volume([v, v])
    assert ei.value.code == "channels"


def test_postprocess_rules_in_the_bundle_are_applied(tmp_path):
    rules = {"foreground": [{"op": "keep_largest"}]}
    plain = make_bundle(tmp_path / "plain", seed=1)
    pp = make_bundle(tmp_path / "pp", seed=1, extra={"postprocess": rules})
    v = Volume(blob_image((16, 16, 16), seed=2))
    a = Predictor.from_bundle(plain).predict_volume(v).label.array
    b = Predictor.from_bundle(pp).predict_volume(v).label.array
    from medseg.postprocess import apply_postprocess

    np.testing.assert_array_equal(b, apply_postprocess(a, (1.0, 1.0, 1.0), rules))
    c = Predictor.from_bundle(pp, postprocess=False).predict_volume(v).label.array
    np.testing.assert_array_equal(c, a)


# ---------------------------------------------------------------------------- bundles
def test_registered_names_and_paths(tmp_path, monkeypatch):
    make_bundle(tmp_path / "zoo" / "tiny_model")
    monkeypatch.setenv("MEDSEG_BUNDLES", str(tmp_path / "zoo"))
    assert registered_bundles()["tiny_model"] == tmp_path / "zoo" / "tiny_model"
    assert resolve_bundle("tiny_model") == tmp_path / "zoo" / "tiny_model"
    assert resolve_bundle(tmp_path / "zoo" / "tiny_model") == tmp_path / "zoo" / "tiny_model"
    with pytest.raises(InputError, match="unknown model 'nope'.*tiny_model") as ei:
        resolve_bundle("nope")
    assert ei.value.code == "unknown_model"


def test_corrupt_weights_fail_with_the_file_named(tmp_path):
    b = make_bundle(tmp_path / "b")
    data = (b / "model.safetensors").read_bytes()
    (b / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="model.safetensors") as ei:
        Predictor.from_bundle(b)
    assert ei.value.code == "corrupt"


def test_weights_of_another_architecture_are_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    other = make_bundle(tmp_path / "other", kwargs={**_kw(), "features": [8, 16]})
    (b / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="do not fit model 'unet'") as ei:
        Predictor.from_bundle(b)
    assert ei.value.code == "wrong_architecture"


def test_bundle_without_plan_or_with_bad_labels_is_refused(tmp_path):
    import yaml

    b = make_bundle(tmp_path / "b")
    meta = yaml.safe_load((b / "bundle.yaml").read_text())
    del meta["plan"]
    (b / "bundle.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match="no preprocessing 'plan'") as ei:
        Predictor.from_bundle(b)
    assert ei.value.code == "bad_bundle"
    c = make_bundle(tmp_path / "c", extra={"labels": {0: "background", 1: "a"}})   # 3 output channels
    with pytest.raises(InputError, match="3 output channels but labels go up to 1"):
        Predictor.from_bundle(c)


def test_missing_weights_file(tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "model.safetensors").unlink()
    with pytest.raises(InputError, match="weights file is missing"):
        Predictor.from_bundle(b)
    save_weights({}, b / "model.safetensors", architecture="unet")
    with pytest.raises(InputError, match="missing key"):
        Predictor.from_bundle(b)


def _kw():
    from tests.inference.helpers import TINY_KWARGS

    return dict(TINY_KWARGS)


def test_preprocess_plan_with_crop_is_undone(tmp_path):
    """A medseg.preprocess plan (crop to non-zero, masked z-score): the prediction inside the box is the
    model's on the cropped, normalised image; outside it is background; the grid is the input's."""
    from medseg.preprocess import apply_plan

    plan = {"target_spacing_mm": [1.0, 1.0, 1.0], "crop": "nonzero",
            "normalization": {"scheme": "zscore", "mask_nonzero": True}, "resample": {"order": "linear"}}
    bundle = make_bundle(tmp_path / "b", extra={"plan": plan, "patch_size": [16, 16, 16]})
    img = np.zeros((24, 24, 24), np.float32)
    img[4:20, 5:21, 3:19] = blob_image((16, 16, 16), seed=5)
    vol = Volume(img, spacing_mm=(1.0, 1.0, 1.0), origin_mm=(3.0, -2.0, 1.5))
    pred = Predictor.from_bundle(bundle).predict_volume(vol, probabilities=True)
    assert pred.label.shape == vol.shape
    np.testing.assert_allclose(pred.label.affine, vol.affine, atol=1e-9)
    pre = apply_plan(vol, plan)
    assert pre.image.shape == (16, 16, 16)
    model, _ = load_bundle(bundle)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(pre.image.array.astype(np.float32))[None, None]), 1)[0].numpy()
    box = (slice(4, 20), slice(5, 21), slice(3, 19))
    np.testing.assert_allclose(pred.probabilities[(slice(None), *box)], ref, atol=2e-5)
    outside = np.ones(vol.shape, bool)
    outside[box] = False
    assert np.all(pred.label.array[outside] == 0)
    np.testing.assert_allclose(pred.probabilities[0][outside], 1.0)


def test_2d_model_runs_slice_by_slice(tmp_path):
    """A 2D model on thick-slice data: slices along the coarsest axis (z), TTA without the z flip."""
    kw = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [4, 8], "norm": "instance"}
    bundle = make_bundle(tmp_path / "b", kwargs=kw, patch=(16, 6), spacing=(3.0, 1.0, 1.0))
    img = blob_image((16, 16, 6), seed=4)
    vol = Volume(img, spacing_mm=(3.0, 1.0, 1.0))
    pred = Predictor.from_bundle(bundle, tta_axes=(0, 2)).predict_volume(vol, probabilities=True)
    model, _ = load_bundle(bundle)
    x = img.astype(np.float64)
    x = torch.from_numpy(((x - x.mean()) / x.std()).astype(np.float32)[:, None])   # (z, 1, y, x): a batch of slices
    with torch.no_grad():
        plain = torch.softmax(model(x), 1)
        mirrored = torch.flip(torch.softmax(model(torch.flip(x, [3])), 1), [3])
    ref = ((plain + mirrored) / 2).permute(1, 0, 2, 3).numpy()                      # (K, z, y, x)
    np.testing.assert_allclose(pred.probabilities, ref, atol=2e-5)
    assert pred.label.shape == vol.shape


def test_large_outputs_resample_labels_instead_of_probabilities(tmp_path, monkeypatch, caplog):
    """Above the memory bound the label map is resampled per label (linear); it agrees with the
    probability path except at a few boundary voxels."""
    import medseg.inference.predictor as predictor_mod

    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16), seed=2)
    aff = oblique_lps_affine(spacing=(1.6, 0.7, 1.3))
    vol = read_volume(save_nifti(blob_image((14, 24, 14), seed=6), tmp_path / "x.nii.gz", aff), kind="image")
    p = Predictor.from_bundle(bundle)
    via_probs = p.predict_volume(vol).label
    monkeypatch.setattr(predictor_mod, "MAX_PROB_BYTES", 0)
    with caplog.at_level(logging.INFO, logger="medseg.inference"):
        via_labels = p.predict_volume(vol).label
    assert "resampling the label map per label" in caplog.text
    assert via_labels.shape == vol.shape and via_labels.array.dtype == np.uint8
    np.testing.assert_allclose(via_labels.affine, vol.affine, atol=1e-9)
    assert np.mean(via_labels.array == via_probs.array) > 0.9


def test_input_guard_refuses_ct_for_an_mri_bundle_unless_forced(tmp_path, caplog):
    guard = {"modality": "MRI", "n_cases": 3, "foreground_percentiles": {"p0.5": 30.0, "p50": 300.0, "p99.5": 900.0},
             "spacing_mm": {"min": [1, 1, 1], "max": [1, 1, 1]},
             "field_of_view_mm": {"min": [16, 16, 16], "max": [24, 24, 24]}}
    bundle = make_bundle(tmp_path / "b", extra={"input_guard": guard})
    ct = np.full((20, 20, 20), -1000.0, np.float32)
    ct[4:16, 4:16, 4:16] = 50.0
    vol = Volume(ct, (1.0, 1.0, 1.0), meta={"path": "ct.nii.gz"})
    with pytest.raises(InputError, match="look like CT") as exc:
        Predictor.from_bundle(bundle).predict_volume(vol)
    assert exc.value.code == "wrong_input" and "--force" in str(exc.value)
    pred = Predictor.from_bundle(bundle, force=True).predict_volume(vol)      # --force: predicted, with the warning
    assert pred.label.shape == (20, 20, 20)
    assert any("look like CT" in w for w in pred.warnings)
    mri = Volume(np.random.default_rng(0).uniform(0, 800, (20, 20, 20)).astype(np.float32), (1.0, 1.0, 1.0))
    assert Predictor.from_bundle(bundle).predict_volume(mri).warnings == []  # like the training data: silent


def test_window_progress_counts_every_window_of_every_pass(tmp_path):
    """30 x 20 x 20 voxels, 16^3 windows at overlap 0.5: starts z 0, 8, 14; y 0, 4; x 0, 4 -> 12 windows,
    times 4 mirror passes (axes 0, 1) = 48, reported as they go through the model."""
    bundle = make_bundle(tmp_path / "b")
    p = Predictor.from_bundle(bundle, tta_axes=(0, 1))
    seen = []
    p.on_windows = lambda done, total: seen.append((done, total))
    p.predict_volume(Volume(np.random.default_rng(0).random((30, 20, 20)).astype(np.float32), (1.0, 1.0, 1.0)))
    assert seen[-1] == (48, 48) and all(t == 48 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_flips_of_a_one_window_case_share_the_forward_passes(tmp_path):
    """A case of one window with 4 mirrorings and batch 4: one forward pass of 4 windows (not 4 of 1),
    and the probabilities of one flip per pass (group 1) to float32 rounding."""
    from medseg.inference.tta import mirror_tta

    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16))
    img = blob_image((16, 16, 16), seed=3)
    pr = Predictor.from_bundle(bundle, tta_axes=(1, 2), backend="torch")
    net = pr.runners()[0]
    sizes = []

    class Count(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return net(x)

    pr._runners = [Count()]
    got = pr.predict_volume(Volume(img, (1.0, 1.0, 1.0)), probabilities=True).probabilities
    assert sizes == [4]
    x = torch.from_numpy(((img.astype(np.float64) - img.mean()) / img.std()).astype(np.float32))[None, None]
    with torch.no_grad():
        want = mirror_tta(net, x, axes=(1, 2))[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
