"""Input checks of the metrics: NSD tolerance in MONAI mode, shapes of the voxel-based distances,
messages for 1D / 4D label maps; and the summary's counts of left-out and imputed rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import GeometryMismatchError
from medseg.metrics.aggregate import summarize_rows
from medseg.metrics.evaluate import evaluate_arrays
from medseg.metrics.surface import compute_surface_distances, nsd
from medseg.metrics.surface_monai import compute_voxel_surface_distances, nsd_monai
from medseg.metrics.surface_stats import surface_overlap


def _cubes():
    a = np.zeros((6, 6, 6), np.uint8)
    a[1:4, 1:4, 1:4] = 1
    return a, np.roll(a, 1, axis=0)


@pytest.mark.parametrize("tol", [math.inf, math.nan, -0.22])
def test_bad_tolerance_raises_in_both_modes(tol):
    a, b = _cubes()
    vsd = compute_voxel_surface_distances(a, b, (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        nsd_monai(vsd, tol)
    sd = compute_surface_distances(a, b, (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(sd, tol)
    with pytest.raises(ValueError, match="tolerance"):
        surface_overlap(sd, tol)
    for mode in ("monai", "surface-distance"):
        with pytest.raises(ValueError, match="tolerance"):
            evaluate_arrays(b, a, spacing_mm=(1, 1, 1), labels=[1], tolerance_mm=tol, mode=mode)


def test_voxel_surface_distances_check_shapes_and_spacing():
    a = np.zeros((80, 80), bool)
    a[10:30, 10:30] = True
    b = np.zeros((80, 50), bool)
    b[10:30, 10:30] = True
    with pytest.raises(ValueError, match=r"differ in shape: reference \(80, 80\), prediction \(80, 50\)"):
        compute_voxel_surface_distances(a, b, (1.0, 1.0))
    with pytest.raises(ValueError, match="2 positive numbers"):
        compute_voxel_surface_distances(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_voxel_surface_distances(a[None, None], a[None, None], (1, 1, 1, 1))


@pytest.mark.parametrize("shape", [(2,), (2, 2, 2, 2)])
def test_geometry_error_on_1d_4d_says_what_is_wrong(shape):
    a = np.zeros(shape, np.uint8)
    with pytest.raises(GeometryMismatchError) as exc:
        evaluate_arrays(a, a, spacing_mm=(1.0,) * len(shape), labels=[1])
    msg = str(exc.value)
    assert f"{len(shape)}D array" in msg and "2D (y, x) or 3D (z, y, x)" in msg
    assert "differs from" not in msg


def test_shape_and_spacing_mismatch_messages():
    with pytest.raises(GeometryMismatchError, match=r"prediction shape \(3, 4\) differs from reference shape \(3, 5\)"):
        evaluate_arrays(np.zeros((3, 4), np.uint8), np.zeros((3, 5), np.uint8), spacing_mm=(1, 1), labels=[1])
    with pytest.raises(GeometryMismatchError, match="2D label maps need 2 spacings"):
        evaluate_arrays(np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), spacing_mm=(1, 1, 1), labels=[1])


def test_summary_counts_left_out_and_imputed_rows():
    nan = math.nan
    rows = [
        {"label": 1, "status": "ok", "dice": 0.8, "assd_mm": 1.0},
        {"label": 1, "status": "ref_empty", "dice": nan, "assd_mm": nan},          # --empty-reference nan
        {"label": 1, "status": "error:missing_pred", "dice": 0.0, "assd_mm": 30.0},  # worst values
        {"label": 1, "status": "error:truncated", "dice": nan, "assd_mm": nan},     # excluded
    ]
    s = summarize_rows(rows, n_boot=50, metrics=["dice", "assd_mm"])["1"]
    assert s["dice"]["n"] == 2 and s["dice"]["mean"] == pytest.approx(0.4)
    assert s["dice"]["n_left_out"] == 2 and s["dice"]["n_imputed"] == 1
    assert s["assd_mm"]["mean"] == pytest.approx(15.5) and s["n_failed"] == 2
