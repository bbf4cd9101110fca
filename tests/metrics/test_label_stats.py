"""Label statistics equal SimpleITK's LabelShapeStatisticsImageFilter + LabelStatisticsImageFilter
(computed here independently), and a tiny case worked out by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import read_volume
from medseg.io.itk import volume_to_sitk
from medseg.metrics.label_stats import (
    CSV_COLUMNS,
    label_statistics,
    read_case_statistics,
    write_case_statistics,
    write_cohort_statistics,
)
from medseg.volume import Volume, affine_to_geometry
from tests.inference.helpers import oblique_lps_affine
from tests.paths import SAMPLES

NAMES = {0: "background", 1: "anterior", 2: "posterior", 3: "absent"}


def _sitk_rows(label: Volume, image: Volume):
    si, sl = volume_to_sitk(image.with_array(image.array.astype(np.float64))), volume_to_sitk(label)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(sl)
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(si, sl)
    out = {}
    for v in shape.GetLabels():
        bb = shape.GetBoundingBox(v)                       # x0, y0, z0, sx, sy, sz
        start, size = np.array(bb[:3]), np.array(bb[3:])
        corners = [sl.TransformIndexToPhysicalPoint([int(start[0] + dx * (size[0] - 1)),
                                                     int(start[1] + dy * (size[1] - 1)),
                                                     int(start[2] + dz * (size[2] - 1))])
                   for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
        ras = np.asarray(corners) * [-1, -1, 1]            # ITK's LPS -> RAS
        out[v] = {"voxels": shape.GetNumberOfPixels(v), "volume_ml": shape.GetPhysicalSize(v) / 1000,
                  "mean": stats.GetMean(v), "std": stats.GetSigma(v), "min": stats.GetMinimum(v),
                  "max": stats.GetMaximum(v), "bbox_start_voxel": start.tolist(), "bbox_size_voxel": size.tolist(),
                  "bbox_size_mm": (size * np.asarray(sl.GetSpacing())).tolist(),
                  "bbox_min_ras_mm": ras.min(axis=0).tolist(), "bbox_max_ras_mm": ras.max(axis=0).tolist()}
    return out


def _compare(rows, ref):
    for r in rows:
        if r["label"] not in ref:
            assert r["voxels"] == 0 and r["volume_ml"] == 0 and r["mean"] is None and r["bbox_size_mm"] is None
            continue
        want = ref[r["label"]]
        assert r["voxels"] == want["voxels"]
        for k in ("volume_ml", "mean", "std", "min", "max"):
            assert r[k] == pytest.approx(want[k], rel=1e-9, abs=1e-9), k
        assert r["bbox_start_voxel"] == want["bbox_start_voxel"] and r["bbox_size_voxel"] == want["bbox_size_voxel"]
        for k in ("bbox_size_mm", "bbox_min_ras_mm", "bbox_max_ras_mm"):
            np.testing.assert_allclose(r[k], want[k], atol=1e-6, err_msg=k)


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_003", "hippocampus_004"])
def test_equal_to_simpleitk_on_the_samples(case):
    image = read_volume(SAMPLES / "hippocampus" / "images" / f"{case}.nii.gz")
    label = read_volume(SAMPLES / "hippocampus" / "labels" / f"{case}.nii.gz", kind="label")
    rows = label_statistics(label, image, NAMES)
    assert [r["label"] for r in rows] == [1, 2, 3]
    _compare(rows, _sitk_rows(label, image))


def test_equal_to_simpleitk_on_an_oblique_anisotropic_grid():
    spacing, origin, direction = affine_to_geometry(oblique_lps_affine(spacing=(2.0, 0.9, 1.1)))
    rng = np.random.default_rng(3)
    img = rng.normal(-200, 300, (12, 15, 11)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[2:7, 3:12, 1:5] = 1
    lab[8:11, 0:4, 6:11] = 2
    lab[5, 13, 9] = 2
    image = Volume(img, spacing, origin, direction)
    label = Volume(lab, spacing, origin, direction, is_label=True)
    _compare(label_statistics(label, image, NAMES), _sitk_rows(label, image))


def test_tiny_case_by_hand():
    img = np.zeros((2, 2, 3), np.float32)
    img[0, 0] = [1, 2, 3]
    lab = np.zeros((2, 2, 3), np.uint8)
    lab[0, 0] = 1                                     # three voxels with intensities 1, 2, 3
    lab[1, 1, 2] = 2                                  # one voxel
    vol = Volume(img, (2.0, 1.0, 0.5))
    r1, r2 = label_statistics(Volume(lab, (2.0, 1.0, 0.5), is_label=True), vol, {1: "a", 2: "b"})
    assert r1["voxels"] == 3 and r1["volume_ml"] == pytest.approx(3 * 1.0 / 1000)
    assert r1["mean"] == 2 and r1["std"] == 1 and (r1["min"], r1["max"]) == (1, 3)      # sample std of 1, 2, 3
    assert r1["bbox_start_voxel"] == [0, 0, 0] and r1["bbox_size_voxel"] == [3, 1, 1]
    assert r1["bbox_size_mm"] == [1.5, 1.0, 2.0]
    assert r2["std"] == 0 and r2["bbox_start_voxel"] == [2, 1, 1]


def test_case_json_and_cohort_csv(tmp_path):
    image = read_volume(SAMPLES / "hippocampus" / "images" / "hippocampus_001.nii.gz")
    label = read_volume(SAMPLES / "hippocampus" / "labels" / "hippocampus_001.nii.gz", kind="label")
    rows = label_statistics(label, image, NAMES)
    p = write_case_statistics(tmp_path / "a_statistics.json", "a", rows)
    assert read_case_statistics(p) == ("a", rows)
    csv_path = write_cohort_statistics(tmp_path / "statistics.csv", [("a", rows), ("=HYPERLINK(1)", rows)])
    with open(csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == CSV_COLUMNS and len(table) == 6
    assert table[0]["case"] == "a" and float(table[0]["volume_ml"]) == pytest.approx(rows[0]["volume_ml"])
    assert table[0]["bbox_size_mm_z"] == str(rows[0]["bbox_size_mm"][2])
    assert table[2]["mean"] == "" and table[3]["case"] == "'=HYPERLINK(1)"
