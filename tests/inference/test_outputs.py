"""``medseg predict --output-format ... --statistics --preview``: every output of a DICOM case agrees
with its NIfTI label map; a NIfTI case asked for a DICOM SEG fails clearly with its NIfTI written;
resume; the preview shows the label colours and a legend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from medseg.cli.main import main
from medseg.errors import ConfigError
from medseg.inference.outputs import parse_output_formats
from medseg.io import read_volume
from medseg.io.dicom_seg import read_dicom_seg
from medseg.io.segments import PALETTE
from medseg.metrics.label_stats import label_statistics
from tests.inference.helpers import blob_cohort, make_bundle
from tests.paths import SAMPLES, shared_path

LABELS = {0: "background", 1: "hippocampus", 2: "left atrium"}


def test_parse_output_formats():
    assert parse_output_formats(None) == ("nifti",)
    assert parse_output_formats(["dicom-seg,seg_nrrd", "nifti", "DICOM-SEG"]) == ("nifti", "dicom-seg", "seg-nrrd")
    with pytest.raises(ConfigError) as ei:
        parse_output_formats(["dicom-seg,rtstruct"])
    assert "rtstruct" in str(ei.value)


def test_dicom_and_nifti_cases_with_every_output(tmp_path, capsys):
    src = shared_path("dicom", "udacity_study3_HCropVolume")
    cohort = tmp_path / "in"
    blob_cohort(cohort, 1, (16, 16, 16))                      # case_0.nii.gz: not DICOM
    shutil.copytree(src, cohort / "mri")
    bundle = make_bundle(tmp_path / "hippocampus_unet", patch=(16, 16, 16), extra={"labels": LABELS})
    out = tmp_path / "out"
    args = ["predict", "--model", str(bundle), "--input", str(cohort), "--output", str(out), "--device", "cpu",
            "--no-progress", "--output-format", "dicom-seg", "--output-format", "seg-nrrd", "--statistics",
            "--preview"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "case_0" in text and "not_dicom" in text and "case_0.nii.gz is not one" in text
    assert (out / "case_0.nii.gz").exists() and not (out / "case_0_seg.dcm").exists()

    nifti = read_volume(out / "mri.nii.gz", kind="label")
    image = read_volume(cohort / "mri")
    present = [int(v) for v in np.unique(nifti.array) if v > 0]
    assert present, "the seeded tiny model labels something on this series"
    seg = read_dicom_seg(out / "mri_seg.dcm", reference=image)
    np.testing.assert_array_equal(seg.array, nifti.array)
    ds = pydicom.dcmread(out / "mri_seg.dcm")
    assert len(ds.SegmentSequence) == len(present)
    alg = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    man = json.loads((out / "manifest.json").read_text())
    assert man["params"]["model"]["weights_sha256"] in alg.AlgorithmParameters
    assert "hippocampus_unet" in alg.AlgorithmName
    nrrd = read_volume(out / "mri.seg.nrrd", kind="label")
    np.testing.assert_array_equal(nrrd.array, nifti.array)
    assert nrrd.same_grid(nifti)
    stats = json.loads((out / "mri_statistics.json").read_text())
    assert stats["labels"] == json.loads(json.dumps(label_statistics(nifti, image, {1: "hippocampus",
                                                                                      2: "left atrium"})))
    table = (out / "statistics.csv").read_text().splitlines()
    assert len(table) == 1 + 2 and all(r.startswith("mri,") for r in table[1:])
    assert (out / "mri_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(man["cases"]["mri"]["outputs"]) == {"mri.nii.gz", "mri_statistics.json", "mri_preview.png",
                                                   "mri.seg.nrrd", "mri_seg.dcm"}
    assert man["cases"]["case_0"]["status"] == "failed"

    # resume: the DICOM case is skipped, the NIfTI case retried (and fails again the same way)
    before = (out / "mri_seg.dcm").read_bytes()
    assert main(args) == 1
    assert "1 already done" in capsys.readouterr().out
    assert (out / "mri_seg.dcm").read_bytes() == before
    assert len((out / "statistics.csv").read_text().splitlines()) == 3


def test_bad_format_is_a_usage_error(tmp_path, caplog):
    bundle = make_bundle(tmp_path / "b")
    blob_cohort(tmp_path / "in", 1, (16, 16, 16))
    rc = main(["predict", "--model", str(bundle), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
               "--device", "cpu", "--output-format", "dicomseg"])
    assert rc in (1, 2)          # a ConfigError: the CLI's code for usage errors (1 today, 2 planned)
    assert "'dicomseg' is not one of nifti, dicom-seg, seg-nrrd" in caplog.text
    assert not (tmp_path / "o").exists()


def test_preview_shows_the_label_colours_and_legend(tmp_path):
    from PIL import Image

    from medseg.report.preview import render_preview

    image = read_volume(SAMPLES / "hippocampus" / "images" / "hippocampus_001.nii.gz")
    label = read_volume(SAMPLES / "hippocampus" / "labels" / "hippocampus_001.nii.gz", kind="label")
    p = render_preview(label, image, {1: "anterior", 2: "posterior"}, tmp_path / "p.png", title="case")
    px = np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)
    for v in (1, 2):                                   # the legend patches: the exact palette colours
        assert np.any(np.all(px == PALETTE[v - 1], axis=1)), v
    assert not np.any(np.all(px == PALETTE[2], axis=1))   # no third label, no third colour


def test_preview_orientation():
    from medseg.report.preview import _to_ras_axes

    arr = np.zeros((2, 3, 4))
    arr[0, 0, 0] = 1
    # array axes z -> S, y -> P, x -> L: y = 0 is the most anterior row (A index 2 of 0..2) and x = 0 the
    # rightmost column (R index 3 of 0..3)
    direction = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])   # columns: z, y, x in RAS
    out, order = _to_ras_axes(arr, direction)
    assert order == [0, 1, 2] and out.shape == (2, 3, 4)
    assert out[0, 2, 3] == 1


def test_bundle_without_label_names(tmp_path, capsys):
    """Labels named only by numbers become ``label N`` segments with the generic code; a bundle
    without ``labels`` is refused before any case."""
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    bundle = make_bundle(tmp_path / "model", patch=(16, 16, 16), extra={"labels": {0: "0", 1: "1", 2: "2"}})
    out = tmp_path / "out"
    assert main(["predict", "--model", str(bundle), "--input", str(folder), "--output", str(out), "--device", "cpu",
                 "--no-progress", "--output-format", "dicom-seg,seg-nrrd", "--statistics"]) == 0
    nifti = read_volume(out / f"{folder.name}.nii.gz", kind="label")
    present = [int(v) for v in np.unique(nifti.array) if v > 0]
    ds = pydicom.dcmread(out / f"{folder.name}_seg.dcm")
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [f"label {v}" for v in present]
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in ds.SegmentSequence} == {"Tissue"}
    assert "label 1" in (out / "statistics.csv").read_text()

    from medseg.bundle import read_meta, write_meta

    meta = read_meta(bundle)
    del meta["labels"]
    write_meta(bundle, meta)
    assert main(["predict", "--model", str(bundle), "--input", str(folder), "--output", str(tmp_path / "o2"),
                 "--device", "cpu", "--no-progress", "--output-format", "dicom-seg"]) != 0
    assert not (tmp_path / "o2").exists()


def test_predict_stage_takes_the_output_options(tmp_path):
    from medseg.pipeline import run_pipeline
    from tests.inference.helpers import REPO_ROOT

    src = blob_cohort(tmp_path / "images", 2, (16, 16, 16))
    bundle = make_bundle(tmp_path / "b")
    cfg = {"name": "t", "output": str(tmp_path / "run"),
           "stages": [{"stage": "predict", "params": {"model": str(bundle), "input": str(src), "device": "cpu",
                                                      "output_format": ["seg-nrrd"], "statistics": True,
                                                      "preview": True}}]}
    ctx = run_pipeline(cfg, config_path=REPO_ROOT / "configs" / "x.yaml")
    assert ctx.results["predict"]["done"] == ["case_0", "case_1"]
    out = tmp_path / "run" / "predict"
    for cid in ("case_0", "case_1"):
        assert {f"{cid}.seg.nrrd", f"{cid}_statistics.json", f"{cid}_preview.png"} <= {p.name for p in out.iterdir()}
    assert len((out / "statistics.csv").read_text().splitlines()) == 1 + 2 * 2


def test_failed_seg_write_fails_the_case_and_keeps_its_nifti(tmp_path, monkeypatch):
    import highdicom as hd

    from medseg.inference.cohort import run_predict

    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    bundle = make_bundle(tmp_path / "hippocampus_unet", patch=(16, 16, 16), extra={"labels": LABELS})

    def disk_full(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"DICM partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", disk_full)
    out = tmp_path / "out"
    rep = run_predict(model=bundle, input_path=folder, output=out, device="cpu", output_formats=["dicom-seg"])
    (o,) = rep.outcomes
    assert o.status == "failed" and o.error["code"] == "disk_full" and "_seg.dcm" in o.error["message"]
    names = {p.name for p in out.iterdir()}
    assert f"{folder.name}.nii.gz" in names and not any("seg.dcm" in n for n in names)
    read_volume(out / f"{folder.name}.nii.gz", kind="label")          # the NIfTI is complete
