"""medseg plan: the planning rules on synthetic fingerprints (values worked out by hand in the
comments), the cost estimate, and bad data sets stopped before anything is planned."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.io import write_volume
from medseg.preprocess.planner import (
    DEVICE_DEFAULTS,
    estimate,
    normalization_for,
    plan_configuration,
    plan_experiment,
    topology,
)
from medseg.volume import Volume


def _fp(spacing, shape, *, p10=None, n=100, crop=1.0, ct=False):
    fi = {"p0.5": -100.0, "p99.5": 300.0, "mean": 80.0, "std": 50.0} if ct else {"mean": 0.0, "std": 1.0}
    return {"median_spacing_mm": list(spacing), "median_shape": list(shape),
            "spacing_percentile10_mm": list(p10 or spacing), "n_cases": n, "median_nonzero_crop_fraction": crop,
            "foreground_intensity": fi, "modality_guess": "CT" if ct else "other"}


LABELS = {0: "background", 1: "a", 2: "b"}


def test_tiny_isotropic_mri():
    plan = plan_experiment(_fp([1, 1, 1], [36, 50, 35]), modalities=["MRI"], labels=LABELS)
    full = plan["configurations"]["3d_fullres"]
    assert plan["target_spacing_mm"] == [1.0, 1.0, 1.0] and plan["anisotropic_axis"] is None
    # 36 -> 18 -> 9 -> 4.5 (>= 4) -> stop: 3 poolings per axis, divisor 8; median rounded up to 8s
    assert full["poolings_per_axis"] == [3, 3, 3] and full["divisor"] == [8, 8, 8]
    assert full["patch_size"] == [40, 56, 40] and full["batch_size"] == 2
    assert full["model"]["features"] == [16, 32, 64, 128] and "kernels" not in full["model"]
    assert full["normalization"] == "zscore"
    assert "3d_lowres" not in plan["configurations"]          # the patch covers the whole median case
    assert plan["configurations"]["2d"]["slice_axis"] == 0


def test_anisotropic_ct_keeps_thick_slices_unpooled_first():
    # (z, y, x) = 5 x 0.8 x 0.8 mm: z is > 3x coarser and has few voxels -> anisotropic axis 0, target z from p10
    fp = _fp([5.0, 0.8, 0.8], [60, 512, 512], p10=[4.0, 0.7, 0.7], ct=True)
    plan = plan_experiment(fp, modalities=["CT"], labels=LABELS)
    assert plan["anisotropic_axis"] == 0
    assert plan["target_spacing_mm"][0] == pytest.approx(4.0, abs=1e-4)
    full = plan["configurations"]["3d_fullres"]
    # 4 mm vs 0.8: kernel 1 and no pooling along z until in-plane spacing reaches 2 mm (two poolings: 3.2 mm)
    assert full["model"]["strides"][0] == [1, 2, 2] and full["model"]["strides"][1] == [1, 2, 2]
    assert full["kernels"][0] == [1, 3, 3] and full["kernels"][1] == [1, 3, 3] and full["kernels"][2] == [3, 3, 3]
    assert full["model"]["strides"][2][0] == 2
    assert full["normalization"] == {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 80.0, "std": 50.0}
    for a, d in enumerate(full["divisor"]):
        assert full["patch_size"][a] % d == 0
    assert plan["configurations"]["2d"]["slice_axis"] == 0


def test_large_ct_gets_lowres_within_budget():
    fp = _fp([1.5, 1.5, 1.5], [300, 512, 512], ct=True)
    plan = plan_experiment(fp, modalities=["CT"], labels=LABELS)
    cfgs = plan["configurations"]
    assert set(cfgs) == {"3d_fullres", "2d", "3d_lowres"}
    low, full = cfgs["3d_lowres"], cfgs["3d_fullres"]
    assert all(lo > fu for lo, fu in zip(low["spacing_mm"], full["spacing_mm"]))
    # lowres stops once the median case is at most ~2 patches
    med_low = np.prod(np.array([300, 512, 512]) * 1.5 / np.array(low["spacing_mm"]))
    assert med_low <= 2 * np.prod(full["patch_size"]) * 1.001
    budget = DEVICE_DEFAULTS["cpu"]["gflop_per_iteration"]
    for c in cfgs.values():
        assert c["estimate"]["gflop_per_iteration"] <= budget and c["estimate"]["memory_gb"] <= 4.0


def test_estimate_monotone_in_patch_and_batch():
    strides, kernels = topology([1, 1, 1], [64, 64, 64])
    feats = [16, 32, 64, 128, 256][: len(strides) + 1]
    base = estimate([64, 64, 64], 2, feats, strides, kernels)
    for axis in range(3):
        bigger = [64, 64, 64]
        bigger[axis] = 80
        e = estimate(bigger, 2, feats, strides, kernels)
        assert e["memory_gb"] > base["memory_gb"] and e["gflop_per_iteration"] > base["gflop_per_iteration"]
    e3 = estimate([64, 64, 64], 3, feats, strides, kernels)
    assert e3["gflop_per_iteration"] == pytest.approx(1.5 * base["gflop_per_iteration"])
    assert e3["memory_gb"] > base["memory_gb"]


def test_estimate_counts_convolutions_by_hand():
    # 2 levels, 1 -> 4 -> 8 channels, 3x3x3 kernels, patch 4^3 = 64 voxels, stride 2 (8 voxels below)
    e = estimate([4, 4, 4], 1, [4, 8], [[2, 2, 2]], [[3, 3, 3], [3, 3, 3]], in_channels=1, out_channels=2)
    enc0 = 27 * (1 * 4 + 4 * 4) * 64
    dec0 = (27 * (2 * 4 * 4 + 4 * 4) + 8 * 4 * 8) * 64
    enc1 = 27 * (4 * 8 + 8 * 8) * 8
    head = 4 * 2 * 64
    assert e["gflop_per_iteration"] == pytest.approx(3 * 2 * (enc0 + dec0 + enc1 + head) / 1e9)


def test_more_gpu_memory_never_gives_a_smaller_patch_or_batch():
    prev = None
    for gb in (2, 4, 8, 16):
        c = plan_configuration([1, 1, 1], [160, 200, 200], device="cuda", memory_gb=gb)
        assert c["estimate"]["memory_gb"] <= gb
        cur = (np.prod(c["patch_size"]), c["batch_size"])
        if prev is not None:
            assert cur[0] >= prev[0]
        prev = cur


def test_normalization_rules():
    assert normalization_for("MRI", {"median_nonzero_crop_fraction": 0.5}) == "zscore_nonzero"
    assert normalization_for("T2", {"median_nonzero_crop_fraction": 0.9}) == "zscore"
    with pytest.raises(Exception, match="CT normalisation"):
        normalization_for("CT", {"foreground_intensity": {}})


# ----------------------------------------------------------------------------- data sets on disk
def _case(root, cid, *, shape=(12, 14, 10), spacing=(1.0, 1.0, 1.0), label_spacing=None, channels=1,
          label_value=1, nan=False, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape).astype(np.float32)
    if nan:
        img[0, 0, 0] = np.nan
    lab = np.zeros(shape, np.uint8)
    lab[3:8, 4:9, 2:7] = label_value
    for ch in range(channels):
        write_volume(Volume(img, spacing), root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
    write_volume(Volume(lab, label_spacing or spacing, is_label=True), root / "labelsTr" / f"{cid}.nii.gz")


def _dataset(tmp_path, n=4, **bad):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "Toy", "channel_names": {"0": "MRI"},
                                                   "labels": {"background": 0, "thing": 1}}))
    for i in range(n):
        _case(root, f"c{i}", seed=i, **(bad if i == 2 else {}))
    return root


def test_plan_cli_writes_a_readable_plan(tmp_path, capsys):
    from medseg import config as cfgmod

    root = _dataset(tmp_path)
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(out)]) == 0
    plan = cfgmod.load_yaml(out)
    assert plan["dataset"]["name"] == "Toy" and plan["modalities"] == ["MRI"]
    assert plan["labels"] == {0: "background", 1: "thing"}
    assert plan["configurations"]["3d_fullres"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert "3d_fullres" in capsys.readouterr().out


@pytest.mark.parametrize("bad, needle", [
    ({"label_spacing": (2.0, 1.0, 1.0)}, "grids differ"),
    ({"label_value": 3}, "unexpected label value"),
    ({"nan": True}, "NaN"),
])
def test_plan_stops_on_a_bad_case(tmp_path, caplog, bad, needle):
    root = _dataset(tmp_path, **bad)
    out = tmp_path / "plan.yaml"
    with caplog.at_level(logging.ERROR):
        assert main(["plan", "--dataset", str(root), "--out", str(out)]) == 1
    assert "c2" in caplog.text and needle in caplog.text
    assert not out.exists()


def test_plan_stops_on_missing_label_or_channel(tmp_path, caplog):
    root = _dataset(tmp_path)
    (root / "labelsTr" / "c1.nii.gz").unlink()
    with caplog.at_level(logging.ERROR):
        assert main(["plan", "--dataset", str(root), "--out", str(tmp_path / "p.yaml")]) == 1
    assert "c1" in caplog.text and "no label" in caplog.text
    root2 = tmp_path / "two"
    (root2 / "imagesTr").mkdir(parents=True)
    (root2 / "labelsTr").mkdir()
    for i in range(3):
        _case(root2, f"k{i}", channels=2, seed=i)
    (root2 / "imagesTr" / "k1_0001.nii.gz").unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["plan", "--dataset", str(root2), "--out", str(tmp_path / "q.yaml")]) == 1
    assert "channels" in caplog.text and "k1" in caplog.text


# ----------------------------------------------------------------------------- training from a plan
def test_config_from_plan_3d_and_2d(tmp_path):
    from medseg.training.config import resolve_config
    from medseg.training.from_plan import config_from_plan

    fp = _fp([5.0, 0.8, 0.8], [60, 256, 256], p10=[4.0, 0.7, 0.7], ct=True)
    plan = {"format": "medseg-plan/1", "dataset": {"root": "DS", "name": "x"},
            **plan_experiment(fp, modalities=["CT"], labels=LABELS)}
    full = plan["configurations"]["3d_fullres"]
    cfg = resolve_config(config_from_plan(plan, "3d_fullres", fold=2, out_dir=tmp_path))
    assert cfg["output"]["dir"] == str(tmp_path / "fold_2") and cfg["data"]["fold"] == 2
    assert cfg["plan"]["patch_size"] == full["patch_size"] and cfg["plan"]["divisor"] == max(full["divisor"])
    assert cfg["model"]["kernels"][0] == [1, 3, 3] and cfg["plan"]["normalization"]["scheme"] == "ct"
    assert cfg["training"]["batch_size"] == full["batch_size"]
    two = plan["configurations"]["2d"]
    cfg2 = resolve_config(config_from_plan(plan, "2d", fold=0, out_dir=tmp_path))
    assert cfg2["model"]["spatial_dims"] == 2
    assert cfg2["plan"]["patch_size"] == [1, *two["patch_size"]]           # one slice along z (axis 0)
    assert cfg2["plan"]["spacing_mm"] == [plan["target_spacing_mm"][0], *two["spacing_mm"]]


def test_ct_plan_normalization_in_training():
    from medseg.preprocess.normalize import normalize_channels as normalize

    x = np.array([[[[-500.0, 0.0, 80.0, 1000.0]]]], dtype=np.float32)
    out = normalize(x, {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 80.0, "std": 50.0})
    # clipped to -100 / 300 first: (-100-80)/50, (0-80)/50, 0, (300-80)/50
    np.testing.assert_allclose(out.ravel(), [-3.6, -1.6, 0.0, 4.4], rtol=1e-6)
    two = normalize(np.stack([x[0], x[0]]), ["none", {"scheme": "ct", "clip": [-100, 300], "mean": 80, "std": 50}])
    np.testing.assert_allclose(two[0].ravel(), x.ravel())
    np.testing.assert_allclose(two[1].ravel(), [-3.6, -1.6, 0.0, 4.4], rtol=1e-6)


def test_bad_plan_normalization_rejected():
    from medseg.errors import ConfigError
    from medseg.training.config import resolve_config

    for bad in ({"scheme": "ct", "clip": [3, 1], "mean": 0, "std": 1}, {"scheme": "ct"}, "zscroe", ["auto"]):
        with pytest.raises(ConfigError, match="normalization"):
            resolve_config({"data": {"root": "x"}, "output": {"dir": "y"}, "plan": {"normalization": bad}})


def test_train_plan_fold_all_skips_finished_and_resumes(tmp_path, capsys, caplog):
    root = _dataset(tmp_path, n=5)
    plan = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(plan)]) == 0
    out = tmp_path / "runs"
    common = ["train", "--plan", str(plan), "--out", str(out), "--set", "training.iters_per_epoch=1",
              "--set", "training.progress=false", "--set", "training.val_every=1"]
    assert main([*common, "--fold", "1", "--set", "training.epochs=1"]) == 0
    capsys.readouterr()
    # fold 1 stopped after 1 of 2 epochs: --fold all needs --resume for it, and continues it to epoch 2
    with caplog.at_level(logging.ERROR):
        assert main([*common, "--fold", "all", "--set", "training.epochs=2"]) == 2   # a usage error
    assert "fold_1 already holds a training run; pass --resume" in caplog.text
    assert main([*common, "--fold", "all", "--set", "training.epochs=2", "--resume"]) == 0
    from medseg.bundle import read_meta

    for f in range(5):
        assert read_meta(out / f"fold_{f}")["training"]["epochs_done"] == 2
    capsys.readouterr()
    assert main([*common, "--fold", "all", "--set", "training.epochs=2", "--resume"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x.get("skipped") for x in lines if "bundle" in x] == ["finished"] * 5
    assert lines[-1]["folds"] == [0, 1, 2, 3, 4]


def test_fold_ensemble_is_the_mean_of_the_folds_probabilities(tmp_path, capsys):
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume

    root = _dataset(tmp_path, n=5)
    plan = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(plan)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--plan", str(plan), "--out", str(run), "--fold", "all", "--set", "training.epochs=1",
                 "--set", "training.iters_per_epoch=2", "--set", "training.progress=false"]) == 0
    assert '"ensemble_bundle"' in capsys.readouterr().out
    img = read_volume(root / "imagesTr" / "c3_0000.nii.gz")
    ens = Predictor.from_bundle(run).predict_volume(img, probabilities=True)
    per = [Predictor.from_bundle(run / f"fold_{f}").predict_volume(img, probabilities=True).probabilities
           for f in range(5)]
    np.testing.assert_allclose(ens.probabilities, np.mean(per, axis=0), atol=1e-6)
    from medseg.bundle import read_meta
    from medseg.postprocess import apply_postprocess

    rules = read_meta(run)["postprocess"]             # chosen on the out-of-fold predictions
    np.testing.assert_array_equal(ens.label.array, apply_postprocess(np.argmax(np.mean(per, axis=0), axis=0),
                                                                     img.spacing_mm, rules))
    sub = Predictor.from_bundle(run, folds=[0, 2]).predict_volume(img, probabilities=True)
    np.testing.assert_allclose(sub.probabilities, (per[0] + per[2]) / 2, atol=1e-6)
    ids = {Predictor.from_bundle(run, folds=fs).identity()["weights_sha256"] for fs in ([0, 2], [0, 1], None)}
    assert len(ids) == 3                                   # the manifest tells fold subsets apart
    with pytest.raises(Exception, match="not in this bundle"):
        Predictor.from_bundle(run, folds=[7])
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(root / "imagesTr"), "--output", str(out),
                 "--folds", "0,2", "--no-progress", "--no-tta"]) == 0
    np.testing.assert_array_equal(read_volume(out / "c3.nii.gz").array, sub.label.array)
    # trained with mirroring (augment.flip, the default), the ensemble mirrors every axis at prediction
    assert read_meta(run)["inference"] == {"tta_axes": [0, 1, 2]}
    out = tmp_path / "pred_tta"
    assert main(["predict", "--model", str(run), "--input", str(root / "imagesTr"), "--output", str(out),
                 "--no-progress"]) == 0
    mirrored = Predictor.from_bundle(run, tta_axes=(0, 1, 2)).predict_volume(img)
    np.testing.assert_array_equal(read_volume(out / "c3.nii.gz").array, mirrored.label.array)


def test_out_of_fold_predictions_cover_every_case_once(tmp_path):
    """After --fold all every case has exactly one out-of-fold prediction, made by the fold that held it
    out, equal to that fold's own prediction of the case; a rerun keeps them (resume)."""
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume

    root = _dataset(tmp_path, n=5)
    plan = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(plan)]) == 0
    run = tmp_path / "run"
    args = ["train", "--plan", str(plan), "--out", str(run), "--fold", "all", "--set", "training.epochs=1",
            "--set", "training.iters_per_epoch=1", "--set", "training.progress=false"]
    assert main(args) == 0
    seen = {}
    for f in range(5):
        for p in sorted((run / f"fold_{f}" / "oof").glob("*.nii.gz")):
            seen.setdefault(p.name[: -len(".nii.gz")], []).append(f)
    assert seen == {f"c{i}": [seen[f"c{i}"][0]] for i in range(5)}
    f = seen["c3"][0]
    # made as the ensemble predicts: mirrored on the axes mirrored in training (all three by default)
    own = Predictor.from_bundle(run / f"fold_{f}", tta_axes=(0, 1, 2)).predict_volume(
        read_volume(root / "imagesTr" / "c3_0000.nii.gz"))
    oof = run / f"fold_{f}" / "oof" / "c3.nii.gz"
    np.testing.assert_array_equal(read_volume(oof).array, own.label.array)
    mtime = oof.stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    assert oof.stat().st_mtime_ns == mtime


def _fake_run(tmp_path, root, folds):
    """Fold folders holding only bundle.yaml and out-of-fold predictions: each prediction is the case's
    label plus one stray voxel far from the box (2 x 125 / (126 + 125) = 250/251 Dice per case)."""
    from medseg.bundle import write_meta
    from medseg.io import read_volume

    run = tmp_path / "run"
    for f, val in folds.items():
        d = run / f"fold_{f}"
        d.mkdir(parents=True)
        train = [c for v in folds.values() for c in v if c not in val]
        write_meta(d, {"data": {"root": str(root), "val_cases": val, "train_cases": train},
                       "labels": {0: "background", 1: "thing"}, "model": {"name": "unet", "kwargs": {}}})
        for c in val:
            lab = read_volume(root / "labelsTr" / f"{c}.nii.gz", is_label=True)
            pred = lab.array.copy()
            pred[11, 13, 9] = 1
            write_volume(Volume(pred, lab.spacing_mm, is_label=True), d / "oof" / f"{c}.nii.gz")
    return run


def test_postprocessing_is_chosen_on_out_of_fold_predictions_only(tmp_path):
    from medseg.training.crossval import choose_run_postprocess

    root = _dataset(tmp_path, n=4)
    run = _fake_run(tmp_path, root, {0: ["c0", "c1"], 1: ["c2", "c3"]})
    # a prediction of a case fold 0 trained on: empty, so it would pull Dice down if it were used
    write_volume(Volume(np.zeros((12, 14, 10), np.uint8), is_label=True), run / "fold_0" / "oof" / "c2.nii.gz")
    res = choose_run_postprocess(run, [0, 1], [1])
    assert res["oof"]["cases"] == 4
    assert res["oof"]["dice"] == {1: round(250 / 251, 6)}
    # the stray voxel goes with the largest foreground component; per label nothing is left to gain
    assert res["postprocess"] == {"foreground": [{"op": "keep_largest"}]}
    assert res["oof"]["dice_postprocessed"] == {1: 1.0}
    (run / "fold_1" / "oof" / "c3.nii.gz").unlink()
    with pytest.raises(Exception, match="fold 1 has no out-of-fold prediction for c3"):
        choose_run_postprocess(run, [0, 1], [1])


def test_candidate_small_component_threshold_from_reference_volumes():
    from medseg.training.crossval import candidate_rules

    refs = [np.zeros((4, 4, 4), np.uint8) for _ in range(3)]
    refs[0][:2, :2, :2] = 1                     # 8 voxels of 2 mm^3 = 16 mm^3
    refs[1][:, :, :] = 1                        # 64 voxels = 128 mm^3
    cand = candidate_rules(refs, [(1.0, 1.0, 2.0)] * 3, [1])      # refs[2] has no label 1: not counted
    # 5th percentile of [16, 128] = 16 + 0.05 * 112 = 21.6 mm^3; a tenth of it
    assert cand[1][1] == {"op": "remove_small", "min_volume_mm3": 2.16}
    assert [o["op"] for o in cand[1]] == ["keep_largest", "remove_small", "fill_holes"]


def test_find_best_configuration_scores_runs_and_their_ensemble_by_hand(tmp_path, capsys):
    """Box [3:8, 4:9, 2:7] (125 voxels). Run A says foreground (p 0.6) on the box plus slab x=7:
    Dice 250/275. Run B says 0.6 on x=3..6 only (100 voxels, Dice 200/225), 0.45 on slab x=2 and
    0.2 on slab x=7. Their mean: x=2 -> 0.525 (kept), x=7 -> 0.4 (dropped): the box, Dice 1."""
    from medseg.bundle import write_meta

    root = _dataset(tmp_path, n=4)
    folds = {0: ["c0", "c1"], 1: ["c2", "c3"]}

    def fg_a():
        p = np.full((12, 14, 10), 0.1, np.float32)
        p[3:8, 4:9, 2:8] = 0.6
        return p

    def fg_b():
        p = np.full((12, 14, 10), 0.1, np.float32)
        p[3:8, 4:9, 3:7] = 0.6
        p[3:8, 4:9, 2] = 0.45
        p[3:8, 4:9, 7] = 0.2
        return p

    runs = {}
    for name, fg in (("A", fg_a), ("B", fg_b)):
        run = tmp_path / name
        for f, val in folds.items():
            d = run / f"fold_{f}"
            write_meta(d, {"data": {"root": str(root), "val_cases": val}, "labels": {0: "background", 1: "thing"},
                           "model": {"name": "unet", "kwargs": {}}})
            for c in val:
                probs = np.stack([1 - fg(), fg()])
                (d / "oof").mkdir(parents=True, exist_ok=True)
                np.savez_compressed(d / "oof" / f"{c}.npz", probabilities=probs.astype(np.float16))
                write_volume(Volume(np.argmax(probs, 0).astype(np.uint8), is_label=True), d / "oof" / f"{c}.nii.gz")
        runs[name] = run
    assert main(["find-best", str(runs["A"]), str(runs["B"]), "--folds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "best: A + B" in out
    from medseg import config as cfgmod

    res = cfgmod.load_yaml(tmp_path / "best.yaml")
    assert [r["members"] for r in res["ranking"]] == [["A", "B"], ["A"], ["B"]]
    assert [r["mean_dice"] for r in res["ranking"]] == [1.0, round(250 / 275, 6), round(200 / 225, 6)]
    assert res["cases"] == 4
    (runs["B"] / "fold_1" / "oof" / "c2.npz").unlink()
    assert main(["find-best", str(runs["A"]), str(runs["B"]), "--folds", "0,1"]) == 1


def test_plan_label_names_rename_labels_and_reject_unknown_ones(tmp_path, caplog):
    from medseg import config as cfgmod

    root = _dataset(tmp_path, n=4)
    plan = tmp_path / "plan.yaml"
    assert main(["plan", "--dataset", str(root), "--out", str(plan), "--label-names", "1=organ"]) == 0
    assert cfgmod.load_yaml(plan)["labels"] == {0: "background", 1: "organ"}
    assert main(["plan", "--dataset", str(root), "--out", str(tmp_path / "p2.yaml"), "--label-names", "3=x"]) == 1
    assert "names label 3, which the data set does not have (labels: 1)" in caplog.text
    assert not (tmp_path / "p2.yaml").exists()


def test_cpu_feature_caps_3d_128_2d_256():
    """On the CPU a 3D network stops widening at 128 features (the deepest levels hold most of the
    weights a five-fold ensemble ships, for little compute); 2D keeps 256; CUDA keeps nnU-Net's 320."""
    big3 = plan_configuration([1.0, 1.0, 1.0], [160, 256, 256], device="cpu")
    assert big3["model"]["features"] == [16, 32, 64, 128, 128, 128][: len(big3["model"]["features"])]
    assert max(big3["model"]["features"]) == 128 and len(big3["model"]["features"]) >= 5
    big2 = plan_configuration([1.0, 1.0], [512, 512], device="cpu")
    assert max(big2["model"]["features"]) == 256
    gpu = plan_configuration([1.0, 1.0, 1.0], [160, 256, 256], device="cuda")
    assert max(gpu["model"]["features"]) == 320
