"""The values of the selected metrics for one case and label, from voxel counts and one
surface-distance computation; the empty-case and failed-case conventions live here.

Conventions (``empty_reference="score"``, the default):

===============  ===========================  =================  ===========================
status           overlap-type (Dice, IoU,     distances (HD,     volumes / specificity
                 NSD, overlaps, sensitivity,  ASSD, MSD)
                 precision)
===============  ===========================  =================  ===========================
``both_empty``   1                            0                  computed (rel. diff 0)
``pred_empty``   0                            image diagonal     computed
``ref_empty``    0                            image diagonal     computed (rel. diff nan)
failed/missing   0 (specificity 0 too)        image diagonal     as an empty prediction
===============  ===========================  =================  ===========================

``empty_reference="nan"`` (MONAI's convention): every metric of a row whose reference is empty
(``both_empty``, ``ref_empty``) is ``nan`` and leaves the means (the summary counts them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medseg.metrics.catalog import hd_percent, spec_of
from medseg.metrics.overlap import dice_from_counts, iou_from_counts
from medseg.metrics.surface import hd_percentile_mm, nsd
from medseg.metrics.surface_monai import hd_percentile_mm_monai, nsd_monai
from medseg.metrics.surface_stats import assd_mm, mean_surface_distances_mm, surface_overlap

EMPTY_REFERENCE = {
    "score": "an empty reference is scored with fixed values (both empty: Dice 1, HD 0; "
             "prediction not empty: Dice 0, HD the image diagonal)",
    "nan": "an empty reference gives nan for every metric and is left out of the means (MONAI)",
}
_SURFACE_OVERLAP = ("nsd", "surface_overlap_ref", "surface_overlap_pred")


def status_of_counts(n_ref: int, n_pred: int) -> str:
    if n_ref == 0 and n_pred == 0:
        return "both_empty"
    if n_pred == 0:
        return "pred_empty"
    if n_ref == 0:
        return "ref_empty"
    return "ok"


def needs_surface(columns: Sequence[str]) -> bool:
    """True when a column needs surface distances."""
    return any(spec_of(c).kind == "distance" or c in _SURFACE_OVERLAP for c in columns)


def _volume(column: str, n_ref: int | None, n_pred: int | None, voxel_ml: float) -> float:
    if n_ref is None or n_pred is None:
        return math.nan
    v_ref, v_pred = n_ref * voxel_ml, n_pred * voxel_ml
    if column == "vol_ref_ml":
        return v_ref
    if column == "vol_pred_ml":
        return v_pred
    if column == "vol_diff_ml":
        return v_pred - v_ref
    if column == "abs_vol_diff_ml":
        return abs(v_pred - v_ref)
    if n_ref == 0:  # rel_vol_diff
        return 0.0 if n_pred == 0 else math.nan
    return (v_pred - v_ref) / v_ref


def _specificity(n_ref: int, n_pred: int, n_both: int, n_total: int) -> float:
    negatives = n_total - n_ref
    if negatives <= 0:
        return math.nan
    return (negatives - (n_pred - n_both)) / negatives


def _surface_value(column: str, sd: Any, *, mode: str, tol: float, percent: float) -> float:
    p = hd_percent(column)
    if p is not None:
        p = percent if column == "hd95_mm" else p
        return hd_percentile_mm_monai(sd, p) if mode == "monai" else hd_percentile_mm(sd, p)
    if column == "nsd":
        return nsd_monai(sd, tol) if mode == "monai" else nsd(sd, tol)
    if column == "assd_mm":
        return assd_mm(sd)
    if column in ("msd_ref_to_pred_mm", "msd_pred_to_ref_mm"):
        return mean_surface_distances_mm(sd)[0 if column == "msd_ref_to_pred_mm" else 1]
    if column in ("surface_overlap_ref", "surface_overlap_pred"):
        return surface_overlap(sd, tol)[0 if column == "surface_overlap_ref" else 1]
    raise KeyError(column)


def label_values(columns: Sequence[str], *, n_ref: int, n_pred: int, n_both: int, n_total: int,
                 voxel_ml: float, diag_mm: float, tol: float, sd: Any = None, mode: str = "surface-distance",
                 percent: float = 95.0, empty_reference: str = "score") -> dict[str, float]:
    """Every column's value for one label (``sd``: the label's surface distances, needed only when
    both masks are non-empty and a surface metric is asked for)."""
    status = status_of_counts(n_ref, n_pred)
    if n_ref == 0 and empty_reference == "nan":
        return {c: math.nan for c in columns}
    out: dict[str, float] = {}
    for c in columns:
        kind = spec_of(c).kind
        if kind == "volume":
            out[c] = _volume(c, n_ref, n_pred, voxel_ml)
        elif kind == "specificity":
            out[c] = _specificity(n_ref, n_pred, n_both, n_total)
        elif status == "both_empty":
            out[c] = 1.0 if kind == "overlap" else 0.0
        elif status != "ok":
            out[c] = 0.0 if kind == "overlap" else diag_mm
        elif c == "dice":
            out[c] = dice_from_counts(n_ref=n_ref, n_pred=n_pred, n_both=n_both)
        elif c == "iou":
            out[c] = iou_from_counts(n_ref=n_ref, n_pred=n_pred, n_both=n_both)
        elif c == "sensitivity":
            out[c] = n_both / n_ref
        elif c == "precision":
            out[c] = n_both / n_pred
        else:
            out[c] = _surface_value(c, sd, mode=mode, tol=tol, percent=percent)
    return out


def worst_values(columns: Sequence[str], *, diag_mm: float, n_ref: int | None, voxel_ml: float) -> dict[str, float]:
    """Values a missing or failed case enters the statistics with: 0 for overlap-type metrics and
    specificity, the image diagonal for distances, an empty prediction's volumes (``nan`` where the
    reference could not be read)."""
    out: dict[str, float] = {}
    for c in columns:
        kind = spec_of(c).kind
        if kind == "volume":
            out[c] = _volume(c, n_ref, 0 if n_ref is not None else None, voxel_ml)
        elif kind == "distance":
            out[c] = diag_mm
        else:
            out[c] = 0.0
    return out
