"""``medseg info``: text and JSON summaries checked against nibabel/SimpleITK, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli.info import looks_like_labels
from medseg.cli.main import main
from tests.paths import REPO, shared_path


def _json(capsys, *argv):
    assert main(["info", "--json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_on_nifti_label(capsys):
    src = shared_path("hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)
    info = _json(capsys, src)
    assert info["shape_zyx"] == list(data.shape[::-1])
    assert info["spacing_mm_zyx"] == pytest.approx(list(img.header.get_zooms()[::-1]))
    assert info["orientation"] == "".join(nib.aff2axcodes(img.affine))
    assert info["origin_mm_ras"] == pytest.approx(img.affine[:3, 3].tolist(), abs=1e-4)
    values, counts = np.unique(data, return_counts=True)
    assert info["labels"] == values.tolist() and info["label_voxels"] == counts.tolist()
    assert info["dtype"] == str(data.dtype)


def test_json_on_image_has_percentiles_not_labels(capsys):
    src = shared_path("hippocampus", "imagesTr", "hippocampus_003.nii.gz")
    data = np.asanyarray(nib.load(str(src)).dataobj)
    info = _json(capsys, src)
    assert "labels" not in info
    assert info["min"] == pytest.approx(float(data.min())) and info["max"] == pytest.approx(float(data.max()))
    p1, p99 = np.percentile(data, [1, 99])
    assert info["p1"] == pytest.approx(p1) and info["p99"] == pytest.approx(p99)


def test_text_on_dicom_folder_and_itk_file(capsys, tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "shape (z,y,x): (40, 50, 34)" in out and "orientation:" in out
    assert "HippoCrop" not in out  # the SeriesDescription (free text) is an identifier: never printed
    src = shared_path("totalsegmentator", "example_seg_dicom.nii.gz")
    mha = tmp_path / "seg.mha"
    sitk.WriteImage(sitk.ReadImage(str(src)), str(mha))
    info = _json(capsys, mha)
    ref = sitk.ReadImage(str(mha))
    assert info["shape_zyx"] == list(ref.GetSize()[::-1])
    assert info["orientation"] == "LAS"
    assert info["labels"][0] == 0 and len(info["labels"]) > 10


def test_looks_like_labels():
    assert looks_like_labels(np.array([0, 0, 0, 2, 5], np.uint8)).tolist() == [0, 2, 5]
    assert looks_like_labels(np.array([0.0, 1.0])) is None  # float: an image
    assert looks_like_labels(np.array([-1, 0, 1])) is None
    img = np.random.default_rng(0).integers(1, 200, size=1000).astype(np.uint8)  # many values, no background
    assert looks_like_labels(img) is None


@pytest.mark.parametrize("make", ["missing", "truncated"])
def test_bad_input_one_line(tmp_path, make):
    """A truncated file is bad input (exit 1); a path that does not exist is a usage error (exit 2)."""
    p = tmp_path / "bad.nii.gz"
    if make == "truncated":
        src = shared_path("hippocampus", "imagesTr", "hippocampus_001.nii.gz")
        p.write_bytes(src.read_bytes()[:5000])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "medseg", "info", str(p)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == (2 if make == "missing" else 1)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(p) in lines[0]
    assert r.stdout == ""
