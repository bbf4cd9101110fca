"""apply_plan / invert_plan on real data, and a preprocessing pipeline run end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg import config as cfgmod
from medseg.io import read_volume
from medseg.pipeline import run_pipeline
from medseg.preprocess.invert import invert_plan
from medseg.preprocess.plan import apply_plan
from tests.paths import shared_path


def _ct_plan(label_order: str) -> dict:
    return {"target_spacing_mm": [1.5, 1.5, 1.5], "crop": "nonzero",
            "normalization": {"scheme": "ct", "clip": [-1000.0, 1500.0], "mean": 50.0, "std": 300.0},
            "resample": {"order": "linear", "label_order": label_order}}


@pytest.mark.shared
def test_apply_and_invert_plan_on_real_ct():
    d = shared_path("totalsegmentator")
    img = read_volume(d / "example_ct_sm.nii.gz")
    lab = read_volume(d / "example_seg.nii.gz", is_label=True)
    res = apply_plan(img, _ct_plan("nearest"), label=lab)
    assert res.image.array.dtype == np.float32 and res.image.spacing_mm == pytest.approx((1.5, 1.5, 1.5))
    assert res.label.shape == res.image.shape and res.label.array.dtype == lab.array.dtype
    # normalisation: voxel values are (clip(HU) - 50) / 300, resampling linear of that
    assert res.image.array.min() >= (-1000 - 50) / 300 - 1e-5 and res.image.array.max() <= (1500 - 50) / 300 + 1e-5
    # nearest labels at an exact factor 2: inverting gives the original labels back exactly
    back = invert_plan(res.label, res.info)
    assert back.same_grid(lab) and np.array_equal(back.array, lab.array)
    # per-label linear (nnU-Net's choice) is smoother: the round trip keeps >= 97% of label voxels
    res2 = apply_plan(img, _ct_plan("linear"), label=lab)
    back2 = invert_plan(res2.label, res2.info)
    fg = lab.array > 0
    assert (back2.array[fg] == lab.array[fg]).mean() > 0.97


@pytest.mark.shared
def test_apply_plan_crops_nonzero_and_zscores_mri():
    d = shared_path("hippocampus")
    img = read_volume(d / "imagesTr" / "hippocampus_003.nii.gz")
    lab = read_volume(d / "labelsTr" / "hippocampus_003.nii.gz", is_label=True)
    plan = {"target_spacing_mm": [1.0, 1.0, 1.0], "crop": "nonzero",
            "normalization": {"scheme": "zscore", "mask_nonzero": False}, "resample": {"order": "cubic"}}
    res = apply_plan(img, plan, label=lab)
    a = res.image.array
    assert a.mean() == pytest.approx(0, abs=1e-4) and a.std() == pytest.approx(1, abs=1e-3)
    box = res.info["crop_box"]
    nz = np.argwhere(img.array != 0)
    assert box["start"] == nz.min(0).tolist() and box["stop"] == (nz.max(0) + 1).tolist()
    back = invert_plan(res.label, res.info)
    assert np.array_equal(back.array, lab.array)


@pytest.mark.shared
def test_pipeline_crop_resample_normalise(tmp_path):
    src = shared_path("hippocampus", "imagesTr")
    inp = tmp_path / "in"
    inp.mkdir()
    for n in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        shutil.copy(src / n, inp / n)
    cfg = {"name": "prep", "output": str(tmp_path / "out"), "stages": [
        {"stage": "crop_foreground", "params": {"input": str(inp), "threshold": 0, "margin_vox": 1}},
        {"stage": "resample", "params": {"spacing_mm": [2.0, 2.0, 2.0], "order": "cubic"}},
        {"stage": "denoise_gaussian", "params": {"sigma_mm": 1.0}},
        {"stage": "minmax", "params": {"lower_percentile": 1, "upper_percentile": 99}},
    ]}
    ctx = run_pipeline(cfg, base_dir=tmp_path)
    resolved = cfgmod.load_yaml(tmp_path / "out" / "config.resolved.yaml")
    assert [s["stage"] for s in resolved["stages"]] == ["crop_foreground", "resample", "denoise_gaussian", "minmax"]
    for cid in ("hippocampus_001", "hippocampus_003"):
        orig = read_volume(inp / f"{cid}.nii.gz")
        crop = read_volume(tmp_path / "out" / "crop_foreground" / f"{cid}.nii.gz")
        final = read_volume(tmp_path / "out" / "minmax" / f"{cid}.nii.gz")
        # the crop's first voxel is at the physical place of its index in the input
        start = np.argwhere(orig.array > 0).min(0) - 1
        start = np.maximum(start, 0)
        assert np.allclose(crop.origin_mm, (orig.affine @ [*start, 1])[:3], atol=1e-3)
        # resampled grid: same field of view, about 2 mm, shape round(n / 2)
        assert final.shape == tuple(int(round(n / 2)) for n in crop.shape)
        assert np.allclose(final.spacing_mm, np.array(crop.shape) / np.array(final.shape), atol=1e-4)
        assert 0.0 <= final.array.min() and final.array.max() <= 1.0
    assert ctx.results["minmax"]["failed"] == {}


def test_stage_with_bad_parameter_reports_case(tmp_path, rng):
    from medseg.io import write_volume
    from medseg.volume import Volume

    write_volume(Volume(rng.normal(size=(4, 4, 4)).astype(np.float32)), tmp_path / "in" / "a.nii.gz")
    cfg = {"output": str(tmp_path / "out"),
           "stages": [{"stage": "ct_window", "params": {"input": str(tmp_path / "in"), "preset": "nope"}}]}
    ctx = run_pipeline(cfg, base_dir=tmp_path)
    assert ctx.results["ct_window"]["failed"] == {"a": "error:bad_params"}


# ----------------------------------------------------------------------------- the one plan format
def test_read_plan_defaults_older_form_and_errors():
    from medseg.errors import ConfigError
    from medseg.preprocess.plan import read_plan

    p = read_plan({"spacing_mm": [1, 2, 3], "normalization": "zscore", "patch_size": [8, 8, 8], "divisor": 8})
    assert p["spacing_mm"] == [1.0, 2.0, 3.0] and p["crop"] == "none" and p["normalize_before_resample"] is False
    assert p["resample"] == {"order": "cubic", "label_order": "nearest", "anisotropy_threshold": 3.0,
                             "anisotropic_order": "nearest", "tolerance": 0.01}
    assert p["patch_size"] == [8, 8, 8] and p["divisor"] == 8          # training keys are carried along
    old = read_plan({"target_spacing_mm": [1.5, 1.5, 1.5], "normalization": {"scheme": "zscore", "mask_nonzero": True},
                     "resample": {"label_order": "linear"}, "modality": "other"})
    assert "target_spacing_mm" not in old and old["spacing_mm"] == [1.5, 1.5, 1.5] and old["modality"] == "other"
    assert old["crop"] == "nonzero" and old["normalize_before_resample"] is True
    assert old["resample"] == {"order": "linear", "label_order": "linear", "anisotropy_threshold": 3.0,
                               "anisotropic_order": "nearest", "tolerance": 0.0}
    assert read_plan({"target_spacing_mm": None})["normalization"] == "none"
    base = {"spacing_mm": [1, 1, 1], "normalization": "zscore"}
    for bad, why in [({"crop": "box"}, "crop"), ({"resample": {"ordr": "cubic"}}, "ordr"),
                     ({"resample": {"order": "quadratic"}}, "resample.order"),
                     ({"spacing_mm": [1, 0, 1]}, "spacing_mm"),
                     ({"normalization": "zscroe"}, "normalization"), ({"normalize_before_resample": "yes"}, "before")]:
        with pytest.raises(ConfigError, match=why):
            read_plan({**base, **bad})
    with pytest.raises(ConfigError, match="normalization"):
        read_plan({"spacing_mm": [1, 1, 1]})


def test_training_plan_resamples_then_normalises_by_hand(rng):
    from medseg.preprocess.normalize import zscore_array
    from medseg.preprocess.plan import apply_plan_arrays
    from medseg.preprocess.resample import resample_array

    img = ndi.gaussian_filter(rng.normal(size=(10, 16, 12)), 1.0).astype(np.float32) * 50 + 200
    lab = (np.arange(10)[:, None, None] % 3 * np.ones((1, 16, 12))).astype(np.uint8)
    plan = {"spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore", "patch_size": [8, 8, 8], "divisor": 8}
    res = apply_plan_arrays(img[None], plan, spacing_mm=(2.0, 1.0, 1.0), label=lab)
    assert res.image.shape == (1, 20, 16, 12) and res.image.dtype == np.float32 and res.crop is None
    want = zscore_array(resample_array(img, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), order="cubic"))
    assert np.array_equal(res.image[0], want)
    assert np.array_equal(res.label, np.repeat(lab, 2, axis=0))       # nearest: each slice twice
    assert res.grid.shape == (20, 16, 12) and res.grid.spacing_mm == (1.0, 1.0, 1.0)
    near = apply_plan_arrays(img[None], plan, spacing_mm=(1.005, 1.0, 0.995), label=lab)   # within 1 %: kept
    assert np.array_equal(near.image[0], zscore_array(img)) and np.array_equal(near.label, lab)
    assert near.grid.spacing_mm == (1.005, 1.0, 0.995)


def test_older_plan_form_keeps_its_steps(rng):
    """A plan of the older form crops, normalises and only then resamples: the Volume functions in that order."""
    from medseg.preprocess import crop_to_foreground, resample_to_spacing, zscore
    from medseg.volume import Volume

    a = np.zeros((14, 18, 16), np.float32)
    a[3:11, 4:15, 2:13] = ndi.gaussian_filter(rng.normal(size=(8, 11, 11)), 1.0) * 40 + 100
    lab = np.zeros(a.shape, np.uint8)
    lab[5:9, 6:12, 4:10] = 1
    d = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], float)
    vol = Volume(a, spacing_mm=(2.0, 0.9, 1.1), origin_mm=(5.0, -3.0, 12.5), direction=d)
    lv = Volume(lab, vol.spacing_mm, vol.origin_mm, vol.direction, is_label=True)
    plan = {"target_spacing_mm": [1.0, 1.0, 1.0], "crop": "nonzero",
            "normalization": {"scheme": "zscore", "mask_nonzero": True},
            "resample": {"order": "cubic", "label_order": "linear"}}
    res = apply_plan(vol, plan, label=lv)
    cropped, box = crop_to_foreground(vol)
    want = resample_to_spacing(zscore(cropped, mask_nonzero=True), (1.0, 1.0, 1.0), order="cubic")
    assert np.array_equal(res.image.array, want.array) and res.image.same_grid(want)
    want_lab = resample_to_spacing(Volume(lab[box.slices], cropped.spacing_mm, cropped.origin_mm, cropped.direction,
                                          is_label=True), (1.0, 1.0, 1.0), label_order="linear")
    assert np.array_equal(res.label.array, want_lab.array)
    assert res.info["crop_box"] == box.to_dict() and res.info["cropped_grid"]["origin_mm"] == list(cropped.origin_mm)
    back = invert_plan(res.label, res.info, label_order="linear")
    assert back.same_grid(lv) and (back.array[lab > 0] == 1).mean() > 0.9 and not back.array[:3].any()


def test_inference_applies_a_ct_training_plan_as_training_did(rng):
    """A trained model's plan with CT normalisation is resampled at inference like in training (not cropped)."""
    from medseg.inference.prepare import preprocess
    from medseg.preprocess.grid import Grid, spacing_grid
    from medseg.preprocess.plan import apply_plan_arrays

    img = rng.uniform(-200, 400, size=(1, 12, 20, 20)).astype(np.float32)
    img[:, :, :3] = 0
    plan = {"spacing_mm": [1.0, 1.1, 1.2], "patch_size": [8, 8, 8], "divisor": 8,
            "normalization": {"scheme": "ct", "clip": [-100, 300], "mean": 40, "std": 90}}
    grid = Grid((12, 20, 20), (2.0, 1.0, 1.0), (3.0, 1.0, -2.0), np.eye(3))
    pre = preprocess(img, grid, plan)
    assert pre.crop is None and pre.grid.to_dict() == spacing_grid(grid, plan["spacing_mm"]).to_dict()
    train = apply_plan_arrays(img, plan, spacing_mm=(2.0, 1.0, 1.0))      # what training computes
    assert np.array_equal(pre.image, train.image)
    assert pre.image.min() >= (-100 - 40) / 90 - 1e-5 and pre.image.max() <= (300 - 40) / 90 + 1e-5


def test_multichannel_crop_is_the_union_and_comes_back(rng):
    from medseg.preprocess.grid import Grid
    from medseg.preprocess.invert import labels_to_input_grid, to_input_grid
    from medseg.preprocess.plan import apply_plan_arrays

    img = np.zeros((2, 12, 14, 16), np.float32)
    img[0, 2:6, 3:9, 4:10] = rng.uniform(1, 2, size=(4, 6, 6))
    img[1, 5:9, 6:11, 7:12] = rng.uniform(1, 2, size=(4, 5, 5))
    grid = Grid(img.shape[1:], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    plan = {"spacing_mm": [0.5, 1.0, 1.0], "crop": "nonzero", "normalization": ["zscore_nonzero", "none"],
            "resample": {"order": "linear"}}
    res = apply_plan_arrays(img, plan, grid=grid)
    assert res.crop.start == (2, 3, 4) and res.crop.stop == (9, 11, 12)
    assert res.cropped.origin_mm == (2.0, 3.0, 4.0) and res.image.shape == (2, 14, 8, 8)
    assert res.image[1].max() <= 2.0 and res.image[0][res.image[0] != 0].mean() == pytest.approx(0, abs=1e-5)
    # a "prediction" on the model grid: class 1 where channel 0 is non-zero
    lab = (res.image[0] != 0).astype(np.uint8)
    back = labels_to_input_grid(lab, res, grid, label_order="nearest")
    assert back.shape == grid.shape and np.array_equal(back, (img[0] != 0).astype(np.uint8))
    probs = np.stack([1.0 - lab, lab]).astype(np.float32)
    full = to_input_grid(probs, res, grid)
    assert full.shape == (2, *grid.shape) and np.all(full[0][:, :, :4] == 1.0) and np.all(full[1][:, :, :4] == 0.0)
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-6)
