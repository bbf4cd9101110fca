"""Data set scanning, checks, folds, plan and config validation of the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.errors import ConfigError, InputError
from medseg.io.dataset import scan_dataset
from medseg.preprocess.normalize import normalize_channels as normalize
from medseg.training.config import resolve_config
from medseg.training.dataset import load_cases, split_folds, train_val_split
from medseg.training.plan import make_plan, round_up
from tests.training.helpers import _save, make_dataset


def test_scan_pairs_cases_and_reads_labels(tmp_path):
    info = scan_dataset(make_dataset(tmp_path / "d", n=3))
    assert [c.case for c in info.cases] == ["case_000", "case_001", "case_002"]
    assert info.labels == {0: "background", 1: "anterior", 2: "posterior"} and info.channels == 1


def test_nnunet_v2_labels_and_channels(tmp_path):
    root = tmp_path / "d"
    make_dataset(root, n=2, dataset_json=False)
    for p in sorted((root / "imagesTr").iterdir()):
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    info = scan_dataset(root)
    assert [c.case for c in info.cases] == ["case_000", "case_001"] and info.channels == 1
    assert info.labels == {0: "background", 1: "a", 2: "b"}


def test_missing_label_names_the_case(tmp_path):
    root = make_dataset(tmp_path / "d", n=3)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(InputError, match="case_001") as ei:
        scan_dataset(root)
    assert ei.value.code == "missing_label"


def test_missing_folder(tmp_path):
    (tmp_path / "d" / "imagesTr").mkdir(parents=True)
    with pytest.raises(InputError, match="labelsTr"):
        scan_dataset(tmp_path / "d")


def test_geometry_mismatch_names_the_case(tmp_path):
    root = make_dataset(tmp_path / "d", n=3)
    _save(np.zeros((16, 20, 15), np.uint8), root / "labelsTr" / "case_002.nii.gz")
    info = scan_dataset(root)
    with pytest.raises(InputError, match=r"case_002.*grids differ") as ei:
        load_cases(info)
    assert ei.value.code == "geometry_mismatch"


def test_spacing_mismatch_is_caught(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    lab = np.zeros((16, 20, 16), np.uint8)
    _save(lab, root / "labelsTr" / "case_001.nii.gz", spacing=(2.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"case_001.*spacing"):
        load_cases(scan_dataset(root))


def test_nan_image_names_the_case(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    img = np.ones((16, 20, 16), np.float32)
    img[3, 4, 5] = np.nan
    _save(img, root / "imagesTr" / "case_001.nii.gz")
    with pytest.raises(InputError, match=r"case_001.*1 NaN") as ei:
        load_cases(scan_dataset(root))
    assert ei.value.code == "nan"


def test_unexpected_label_value_names_the_case(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    lab = np.zeros((16, 20, 16), np.uint8)
    lab[1, 1, 1] = 5
    _save(lab, root / "labelsTr" / "case_000.nii.gz")
    with pytest.raises(InputError, match=r"case_000.*unexpected label value\(s\) \[5\]"):
        load_cases(scan_dataset(root))


def test_non_integer_label_values(tmp_path):
    root = make_dataset(tmp_path / "d", n=2, dataset_json=False)
    lab = np.zeros((16, 20, 16), np.float32)
    lab[1, 1, 1] = 0.5
    _save(lab, root / "labelsTr" / "case_001.nii.gz")
    with pytest.raises(InputError, match=r"case_001.*integers"):
        load_cases(scan_dataset(root))


def test_labels_inferred_without_dataset_json(tmp_path):
    info = scan_dataset(make_dataset(tmp_path / "d", n=2, dataset_json=False))
    load_cases(info)
    assert info.labels == {0: "background", 1: "label_1", 2: "label_2"}


def test_folds_are_a_deterministic_partition():
    ids = [f"c{i:02d}" for i in range(11)]
    folds = split_folds(ids, num_folds=3, seed=7)
    assert sorted(sum(folds, [])) == ids and sorted(len(f) for f in folds) == [3, 4, 4]
    assert folds == split_folds(list(reversed(ids)), num_folds=3, seed=7)    # input order is irrelevant
    assert folds != split_folds(ids, num_folds=3, seed=8)
    tr, va = train_val_split(ids, fold=1, num_folds=3, seed=7)
    assert sorted(va) == sorted(folds[1]) and not set(tr) & set(va) and len(tr) + len(va) == 11
    assert train_val_split(ids, fold="all", num_folds=3, seed=7) == (ids, [])


def test_plan_auto_and_override(tmp_path):
    info = scan_dataset(make_dataset(tmp_path / "d", n=3, shape=(13, 20, 17)))
    raw = load_cases(info)
    cfg = resolve_config({"data": {"root": "x"}, "output": {"dir": "y"}})
    plan = make_plan(raw, cfg["plan"])
    assert plan["patch_size"] == [16, 24, 24] and plan["median_shape"] == [13, 20, 17]
    assert plan["spacing_mm"] == [1.0, 1.0, 1.0] and plan["normalization"] == "zscore"
    plan = make_plan(raw, {**cfg["plan"], "patch_size": [8, 8, 8], "normalization": "none"})
    assert plan["patch_size"] == [8, 8, 8] and plan["normalization"] == "none"
    assert round_up([1, 8, 9], 8) == [8, 8, 16]


def test_normalize():
    x = np.array([[[[0.0, 0.0, 1.0, 3.0]]]])
    z = normalize(x, "zscore")
    np.testing.assert_allclose(z.ravel(), (x.ravel() - 1.0) / np.sqrt(1.5), rtol=1e-6)
    nz = normalize(x, "zscore_nonzero")       # mean 2, std 1 over the non-zero voxels; zeros stay 0
    np.testing.assert_allclose(nz.ravel(), [0, 0, -1, 1], rtol=1e-6)


def test_config_unknown_keys_are_named():
    base = {"data": {"root": "x"}, "output": {"dir": "y"}}
    with pytest.raises(ConfigError, match="lrr"):
        resolve_config({**base, "training": {"lrr": 1}})
    with pytest.raises(ConfigError, match="optimiser"):
        resolve_config({**base, "optimiser": {}})
    with pytest.raises(ConfigError, match="training.schedule"):
        resolve_config({**base, "training": {"schedule": "step"}})
    with pytest.raises(ConfigError, match="data.root"):
        resolve_config({"output": {"dir": "y"}})
    with pytest.raises(ConfigError, match="plan.patch_size"):
        resolve_config({**base, "plan": {"patch_size": [16, 16]}})


def test_shipped_config_is_valid():
    from medseg.config import load_yaml
    from tests.training.helpers import REPO_ROOT

    cfg = resolve_config(load_yaml(REPO_ROOT / "configs" / "seg3d" / "hippocampus_unet.yaml"))
    assert cfg["model"]["name"] == "unet" and cfg["plan"]["patch_size"] == [40, 56, 40]
    assert cfg["data"]["labels"] == {1: "anterior", 2: "posterior"}
    assert all(p % cfg["plan"]["divisor"] == 0 for p in cfg["plan"]["patch_size"])


def test_config_labels_override_and_check(tmp_path):
    from medseg.training.prepare import prepare_data

    root = make_dataset(tmp_path / "d", n=3, dataset_json=False)
    base = {"data": {"root": str(root), "num_folds": 3, "labels": {1: "a", 2: "b"}}, "output": {"dir": "y"},
            "plan": {"patch_size": [8, 8, 8]}}
    data = prepare_data(resolve_config(base))
    assert data.labels == {0: "background", 1: "a", 2: "b"} and len(data.train) == 2 and len(data.val) == 1
    base["data"]["labels"] = {1: "a"}
    with pytest.raises(InputError, match=r"case_000.*unexpected label value\(s\) \[2\]"):
        prepare_data(resolve_config(base))
    base["data"]["labels"] = ["a"]
    with pytest.raises(ConfigError, match="data.labels"):
        resolve_config(base)
