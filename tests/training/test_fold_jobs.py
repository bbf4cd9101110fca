"""``medseg train --dataset`` (plan, then train) and ``--fold all --executor ray`` (folds in parallel on a
local 2-CPU Ray cluster) giving the same folds as training them one after another."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medseg.cli.main import main
from tests.inference.helpers import REPO_ROOT
from tests.preprocess.test_planner import _dataset

TINY = ["--set", "training.epochs=1", "--set", "training.iters_per_epoch=2", "--set", "training.progress=false",
        "--set", "training.threads=1", "--set", "model.features=[4,8]"]


def _weights(d):
    from safetensors.numpy import load_file

    return load_file(str(d / "model.safetensors"))


def test_train_dataset_plans_then_trains_and_reuses_its_plan(tmp_path, capsys, caplog):
    root = _dataset(tmp_path, n=5)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(root), "--out", str(out), "--fold", "0", *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"plan written to {out / 'plan.yaml'}" in printed and "3d_fullres" in printed
    from medseg import config as cfgmod
    from medseg.bundle import read_meta

    plan = cfgmod.load_yaml(out / "plan.yaml")
    meta = read_meta(out / "fold_0")
    assert meta["patch_size"] == plan["configurations"]["3d_fullres"]["patch_size"]
    assert meta["model"]["kwargs"]["features"] == [4, 8]          # --set still applies
    # the input guard: from the 4 training cases of fold 0 (12 x 14 x 10 voxels of 1 mm), dataset.json's modality
    guard = meta["input_guard"]
    assert guard["modality"] == "MRI" and guard["n_cases"] == 4
    assert guard["field_of_view_mm"] == {"min": [12.0, 14.0, 10.0], "max": [12.0, 14.0, 10.0]}
    assert guard["spacing_mm"] == {"min": [1.0, 1.0, 1.0], "max": [1.0, 1.0, 1.0]}
    (out / "plan.yaml").write_text((out / "plan.yaml").read_text().replace("batch_size: 2", "batch_size: 1"))
    import logging

    with caplog.at_level(logging.INFO):
        assert main(["train", "--dataset", str(root), "--out", str(out), "--fold", "1", *TINY]) == 0
    assert "reusing the plan of this run" in caplog.text
    assert "plan written" not in capsys.readouterr().out


def test_ray_executor_needs_fold_all(tmp_path, caplog):
    root = _dataset(tmp_path, n=5)
    assert main(["train", "--dataset", str(root), "--out", str(tmp_path / "r"), "--executor", "ray"]) == 2
    assert "--executor ray runs the folds of --fold all" in caplog.text


@pytest.mark.slow  # one Ray cluster start (~10 s) and 5 + 5 tiny folds
def test_folds_on_ray_equal_folds_one_after_another(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'medseg[distributed]'")
    root = _dataset(tmp_path, n=5)
    plan = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(plan)]) == 0
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert main(["train", "--plan", str(plan), "--out", str(seq), "--fold", "all", *TINY]) == 0
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": env})
    try:
        assert main(["train", "--plan", str(plan), "--out", str(par), "--fold", "all", "--executor", "ray", *TINY]) == 0
    finally:
        ray.shutdown()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1]["folds"] == [0, 1, 2, 3, 4]
    for f in range(5):
        a, b = _weights(seq / f"fold_{f}"), _weights(par / f"fold_{f}")
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=f"fold {f} {k}")
        assert sorted(p.name for p in (par / f"fold_{f}" / "oof").iterdir()) == \
            sorted(p.name for p in (seq / f"fold_{f}" / "oof").iterdir())
    from medseg.bundle import read_meta

    assert read_meta(par)["postprocess"] == read_meta(seq)["postprocess"]
    assert read_meta(par)["crossval"] == read_meta(seq)["crossval"]


def test_trained_mirror_axes_rule():
    from medseg.training.fold_bundle import trained_mirror_axes

    assert trained_mirror_axes(True) == [0, 1, 2]
    assert trained_mirror_axes(True, slice_axis=2) == [0, 1]     # a 2D net is not mirrored across its slices
    assert trained_mirror_axes(False) == [] and trained_mirror_axes(False, slice_axis=0) == []


def test_folds_may_differ_in_their_training_cases_median_shape_only(tmp_path):
    """Each fold's plan records the median shape of its own training cases; that does not stop the
    ensemble, a different preprocessing setting does (the error names the fold and the key)."""
    import pytest

    from medseg.bundle import read_meta
    from medseg.errors import InputError
    from medseg.training.fold_bundle import write_fold_ensemble
    from tests.inference.helpers import make_bundle

    run = tmp_path / "run"
    make_bundle(run / "fold_0", seed=0, extra={"plan": {"spacing_mm": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16],
                                                         "normalization": "zscore", "median_shape": [35, 51, 35]}})
    make_bundle(run / "fold_1", seed=1, extra={"plan": {"spacing_mm": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16],
                                                         "normalization": "zscore", "median_shape": [36, 50, 35]}})
    write_fold_ensemble(run, [0, 1], choose_postprocess=False)
    assert read_meta(run)["folds"] == [0, 1]
    make_bundle(run / "fold_2", seed=2, extra={"plan": {"spacing_mm": [2.0, 1.0, 1.0], "patch_size": [16, 16, 16],
                                                         "normalization": "zscore", "median_shape": [35, 51, 35]}})
    with pytest.raises(InputError, match="fold 2 differs from fold 0 in plan"):
        write_fold_ensemble(run, [0, 1, 2], choose_postprocess=False)
