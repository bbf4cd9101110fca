"""Case-level scoring: hand-worked overlap, empty-case conventions, per-label tolerance, MONAI mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import GeometryMismatchError, InputError
from medseg.metrics.evaluate import evaluate_arrays, evaluate_case, labels_present
from medseg.metrics.overlap import dice_from_counts, iou_from_counts, label_counts
from medseg.volume import Volume
from tests.paths import shared_path


def test_shifted_cubes_dice_iou_by_hand():
    # 3x3x3 cubes shifted one voxel along z: overlap 2*3*3 = 18 of 27 each.
    ref = np.zeros((7, 6, 6), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    pred = np.zeros_like(ref)
    pred[2:5, 1:4, 1:4] = 1
    (row,) = evaluate_arrays(pred, ref, spacing_mm=(2.0, 1.0, 0.5), labels=[1])
    assert row.dice == pytest.approx(2 * 18 / 54)
    assert row.iou == pytest.approx(18 / 36)
    assert row.hd95_mm <= 2.0 and row.status == "ok"
    assert (row.n_ref_voxels, row.n_pred_voxels) == (27, 27)


def test_empty_conventions():
    shape, spacing = (4, 5, 6), (2.0, 1.0, 0.5)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[1, 1, 1] = 1   # label 1: prediction empty
    pred[2, 2, 2] = 2  # label 2: reference empty
    rows = {r.label: r for r in evaluate_arrays(pred, ref, spacing_mm=spacing, labels=[1, 2, 3])}
    diag = math.sqrt((4 * 2.0) ** 2 + (5 * 1.0) ** 2 + (6 * 0.5) ** 2)
    assert rows[1].status == "pred_empty" and rows[2].status == "ref_empty" and rows[3].status == "both_empty"
    for k in (1, 2):
        assert (rows[k].dice, rows[k].iou, rows[k].nsd) == (0.0, 0.0, 0.0)
        assert rows[k].hd95_mm == pytest.approx(diag)
    assert (rows[3].dice, rows[3].iou, rows[3].nsd, rows[3].hd95_mm) == (1.0, 1.0, 1.0, 0.0)


def test_per_label_tolerance_and_order():
    ref = np.zeros((3, 3, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 1], pred[1, 1, 4] = 1, 1   # 1.0 mm / 1.5 mm apart at sx = 0.5 (see surface tests)
    ref[1, 1, 8], pred[1, 1, 8] = 2, 2
    rows = evaluate_arrays(pred, ref, spacing_mm=(1, 1, 0.5), labels=[2, 1], tolerance_mm={1: 1.2, 2: 0.0})
    assert [r.label for r in rows] == [2, 1]
    assert rows[1].nsd == pytest.approx(0.5) and rows[1].nsd_tolerance_mm == 1.2
    assert rows[0].nsd == 1.0 and rows[0].hd95_mm == 0.0
    rows = evaluate_arrays(pred, ref, spacing_mm=(1, 1, 0.5), labels=[1], tolerance_mm=1.5)
    assert rows[0].nsd == 1.0
    with pytest.raises(ValueError):
        evaluate_arrays(pred, ref, spacing_mm=(1, 1, 1), labels=[1], tolerance_mm={2: 1.0})


def test_geometry_mismatch_and_bad_labels():
    a = np.zeros((3, 3, 3), np.uint8)
    v1 = Volume(a, spacing_mm=(1, 1, 1), is_label=True)
    v2 = Volume(a, spacing_mm=(1, 1, 2), is_label=True)
    with pytest.raises(GeometryMismatchError):
        evaluate_case(v1, v2, labels=[1])
    with pytest.raises(InputError):
        evaluate_arrays(a + 0.5, a, spacing_mm=(1, 1, 1), labels=[1])
    with pytest.raises(ValueError):
        evaluate_arrays(a, a, spacing_mm=(1, 1, 1), labels=[0])


def test_label_counts_and_labels_present(rng):
    ref = rng.integers(0, 5, size=(6, 7, 8))
    pred = rng.integers(0, 5, size=(6, 7, 8))
    counts = label_counts(ref, pred, [1, 3, 4, 7])
    for i, k in enumerate([1, 3, 4, 7]):
        assert counts[i].tolist() == [(ref == k).sum(), (pred == k).sum(), ((ref == k) & (pred == k)).sum()]
    rows = evaluate_arrays(pred, ref, spacing_mm=(1, 1, 1), labels=[1, 3, 4])
    for r, c in zip(rows, counts):
        assert r.dice == pytest.approx(dice_from_counts(n_ref=c[0], n_pred=c[1], n_both=c[2]))
        assert r.iou == pytest.approx(iou_from_counts(n_ref=c[0], n_pred=c[1], n_both=c[2]))
    assert labels_present(np.array([[[0, 3, 3, 9]]])) == [3, 9]


def _monai_reference(ref, pred, spacing, tol):
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    y = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    yp = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    hd = compute_hausdorff_distance(yp, y, include_background=False, percentile=95, spacing=spacing)
    ns = compute_surface_dice(yp, y, class_thresholds=[tol], include_background=False, spacing=spacing)
    return float(hd[0, 0]), float(ns[0, 0])


def test_monai_mode_matches_monai_on_real_masks():
    from medseg.io import read_volume

    d = shared_path("hippocampus", "labelsTr")
    lab = read_volume(d / "hippocampus_003.nii.gz", is_label=True).array
    spacing = (1.5, 1.0, 0.8)
    for k in (1, 2):
        ref = lab == k
        for pred in (ndimage.binary_dilation(ref), np.roll(ref, 2, axis=1)):
            (row,) = evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=spacing, labels=[1],
                                     tolerance_mm=1.0, mode="monai")
            hd, ns = _monai_reference(ref, pred, spacing, 1.0)
            assert row.hd95_mm == pytest.approx(hd, rel=1e-5, abs=1e-5)
            assert row.nsd == pytest.approx(ns, abs=1e-6)


def test_monai_mode_matches_monai_totalsegmentator():
    from medseg.io import read_volume

    d = shared_path("totalsegmentator")
    ref = read_volume(d / "example_seg.nii.gz", is_label=True)
    pred = read_volume(d / "example_seg_fast.nii.gz", is_label=True)
    labels = [k for k in sorted(set(np.unique(ref.array)) & set(np.unique(pred.array)) - {0})][:6]
    rows = evaluate_arrays(pred.array, ref.array, spacing_mm=ref.spacing_mm, labels=labels, tolerance_mm=3.0,
                           mode="monai")
    for r in rows:
        hd, ns = _monai_reference(ref.array == r.label, pred.array == r.label, ref.spacing_mm, 3.0)
        assert r.hd95_mm == pytest.approx(hd, rel=1e-5, abs=1e-5)
        assert r.nsd == pytest.approx(ns, abs=1e-6)
