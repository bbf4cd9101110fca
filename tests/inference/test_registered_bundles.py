"""The shipped hippocampus bundle (skipped until medseg/bundles/hippocampus_unet is in the checkout):
predictions of the sample cases on their grids, scored against their references; the demo config."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.bundles import registered_bundles
from medseg.io import read_volume
from medseg.metrics.overlap import dice_from_counts, label_counts
from tests.paths import REPO, SAMPLES


def _needs_bundle():
    if "hippocampus_unet" not in registered_bundles():
        pytest.skip("medseg/bundles/hippocampus_unet is not in this checkout")


def test_hippocampus_samples_are_segmented(tmp_path):
    _needs_bundle()
    from medseg.inference.cohort import run_predict

    rep = run_predict(model="hippocampus_unet", input_path=SAMPLES / "hippocampus" / "images",
                      output=tmp_path / "pred", device="cpu")
    assert not rep.failed and rep.count("done") == 4
    dices = []
    for o in rep.outcomes:
        img = read_volume(SAMPLES / "hippocampus" / "images" / f"{o.case_id}.nii.gz")
        ref = read_volume(SAMPLES / "hippocampus" / "labels" / f"{o.case_id}.nii.gz", kind="label")
        pred = read_volume(tmp_path / "pred" / f"{o.case_id}.nii.gz", kind="label")
        assert pred.shape == img.shape
        np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
        counts = label_counts(ref.array, pred.array, [1, 2])
        dices.append([dice_from_counts(n_ref=int(c[0]), n_pred=int(c[1]), n_both=int(c[2])) for c in counts])
    # a trained model: nnU-Net reaches ~0.89-0.90 on this task; a broken pipeline scores near 0
    assert np.mean(dices) > 0.75, dices


def test_predict_hippocampus_config_runs(tmp_path, monkeypatch):
    _needs_bundle()
    from medseg import config as cfgmod
    from medseg.pipeline import run_pipeline

    monkeypatch.chdir(REPO)
    cfg = cfgmod.load_yaml(REPO / "configs" / "predict_hippocampus.yaml")
    cfg["output"] = str(tmp_path / "out")
    cfg["params"]["predict"]["device"] = "cpu"
    ctx = run_pipeline(cfg, config_path=REPO / "configs" / "predict_hippocampus.yaml")
    assert ctx.results["evaluate"]["cases"] == 4 and not ctx.results["evaluate"]["failed"]
    assert (tmp_path / "out" / "evaluate" / "report.html").is_file()
