"""Fingerprint, plan proposal and the ``medseg fingerprint`` CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medseg import config as cfgmod
from medseg.cli.main import main
from medseg.io import read_volume, write_volume
from medseg.preprocess.fingerprint import fingerprint, guess_modality
from medseg.preprocess.plan import propose_plan
from medseg.volume import Volume
from tests.paths import shared_path


def _write_case(tmp_path, name, spacing, shape, rng, *, ct=False):
    img = rng.normal(300, 50, size=shape).astype(np.float32)
    if ct:
        img = np.round(rng.normal(40, 30, size=shape)).astype(np.int16)
        img[:, :, :2] = -1000  # air
    lab = np.zeros(shape, np.uint8)
    lab[1:-1, 2:5, 3:6] = 1
    write_volume(Volume(img, spacing_mm=spacing), tmp_path / "img" / f"{name}.nii.gz")
    write_volume(Volume(lab, spacing_mm=spacing, is_label=True), tmp_path / "lab" / f"{name}.nii.gz")
    return img, lab


def test_fingerprint_statistics_and_anisotropic_plan(tmp_path, rng):
    cases = [("a", (4.0, 0.8, 0.8), (8, 40, 40)), ("b", (5.0, 0.8, 0.8), (9, 44, 40)),
             ("c", (6.0, 0.7, 0.7), (10, 40, 48))]
    fg = []
    for name, sp, sh in cases:
        img, lab = _write_case(tmp_path, name, sp, sh, rng)
        fg.append(img[lab > 0])
    paths = [tmp_path / "img" / f"{n}.nii.gz" for n, _, _ in cases]
    labels = [tmp_path / "lab" / f"{n}.nii.gz" for n, _, _ in cases]
    fp = fingerprint(paths, labels, samples_per_case=10**6)  # no sub-sampling: exact statistics
    assert fp["median_spacing_mm"] == pytest.approx([5.0, 0.8, 0.8])
    assert fp["median_shape"] == [9, 40, 40]
    allfg = np.concatenate(fg).astype(np.float64)
    fi = fp["foreground_intensity"]
    assert fi["n_samples"] == allfg.size
    assert fi["p0.5"] == pytest.approx(np.percentile(allfg, 0.5), rel=1e-6)
    assert fi["p99.5"] == pytest.approx(np.percentile(allfg, 99.5), rel=1e-6)
    assert fi["mean"] == pytest.approx(allfg.mean(), rel=1e-6) and fi["std"] == pytest.approx(allfg.std(), rel=1e-6)
    assert fp["modality_guess"] == "other" and fp["labels"] == [1]
    plan = propose_plan(fp)
    # z: 5.0 > 3 * 0.8 and 9 * 3 < 40 -> 10th percentile of z spacings (4.2) instead of the median
    assert plan["anisotropic_axis"] == 0
    assert plan["spacing_mm"] == pytest.approx([4.2, 0.8, 0.8], abs=1e-4)
    assert plan["normalization"] == {"scheme": "zscore", "mask_nonzero": False}


def test_ct_guess_and_ct_normalisation_plan(tmp_path, rng):
    for name in ("x", "y"):
        _write_case(tmp_path, name, (1.0, 1.0, 1.0), (6, 20, 20), rng, ct=True)
    fp = fingerprint(sorted((tmp_path / "img").iterdir()), sorted((tmp_path / "lab").iterdir()))
    assert fp["modality_guess"] == "CT"
    plan = propose_plan(fp)
    fi = fp["foreground_intensity"]
    assert plan["normalization"] == {"scheme": "ct", "clip": [fi["p0.5"], fi["p99.5"]], "mean": fi["mean"],
                                     "std": fi["std"]}
    assert plan["spacing_mm"] == [1.0, 1.0, 1.0] and plan["anisotropic_axis"] is None


def test_modality_guess_rules():
    assert guess_modality(np.array([-1024, -1000, 0, 40, 1200] * 100)) == "CT"
    assert guess_modality(np.array([0.0, 10.5, 300.2])) == "other"  # MR-like, non-negative floats
    assert guess_modality(np.array([-5000, -1000, 0] * 100)) == "other"  # not HU


def test_bad_case_is_reported_others_go_on(tmp_path, rng):
    _write_case(tmp_path, "good", (1.0, 1.0, 1.0), (6, 10, 10), rng)
    bad = tmp_path / "img" / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    fp = fingerprint([tmp_path / "img" / "good.nii.gz", bad])
    assert fp["n_cases"] == 1 and list(fp["failed"]) == ["bad"]
    assert fp["failed"]["bad"].startswith("error:")


@pytest.mark.shared
def test_real_ct_and_mr_fingerprints():
    d = shared_path("totalsegmentator")
    ct = fingerprint([d / "example_ct_sm.nii.gz"], [d / "example_seg.nii.gz"])
    mr = fingerprint([d / "example_mr_sm.nii.gz"], [d / "example_seg_mr.nii.gz"])
    assert ct["modality_guess"] == "CT" and mr["modality_guess"] == "other"
    assert ct["median_spacing_mm"] == pytest.approx([3.0, 3.0, 3.0])
    fi = ct["foreground_intensity"]
    assert -1100 < fi["p0.5"] < fi["p50"] < fi["p99.5"] < 3500  # organs and bone in HU
    assert propose_plan(ct)["normalization"]["scheme"] == "ct"


@pytest.mark.shared
def test_cli_writes_plan_for_hippocampus_subset(tmp_path, capsys):
    src = shared_path("hippocampus")
    names = sorted(p.name for p in (src / "imagesTr").iterdir())[:6]
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
        for n in names:
            shutil.copy(src / sub / n, tmp_path / sub / n)
    out = tmp_path / "plan.yaml"
    rc = main(["fingerprint", "--images", str(tmp_path / "imagesTr"), "--labels", str(tmp_path / "labelsTr"),
               "--out", str(out)])
    assert rc == 0 and out.is_file()
    plan = cfgmod.load_yaml(out)
    shapes = np.array([read_volume(tmp_path / "imagesTr" / n).shape for n in names])
    assert plan["fingerprint"]["median_shape"] == np.median(shapes, axis=0).tolist()
    assert plan["spacing_mm"] == [1.0, 1.0, 1.0]
    assert plan["modality"] == "other" and plan["normalization"]["scheme"] == "zscore"
    assert plan["fingerprint"]["labels"] == [1, 2]
    assert '"cases": 6' in capsys.readouterr().out
    # a missing label is a clear error, not a crash
    (tmp_path / "labelsTr" / names[0]).unlink()
    rc = main(["fingerprint", "--images", str(tmp_path / "imagesTr"), "--labels", str(tmp_path / "labelsTr"),
               "--out", str(tmp_path / "p2.yaml")])
    assert rc == 1 and not (tmp_path / "p2.yaml").exists()
