"""apply_plan / invert_plan on real data, and a preprocessing pipeline run end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medseg import config as cfgmod
from medseg.io import read_volume
from medseg.pipeline import run_pipeline
from medseg.preprocess.plan import apply_plan, invert_plan
from tests.conftest import shared_path


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
