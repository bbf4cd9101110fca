"""Case-level scoring: Dice, IoU, HD95 and NSD for every label of one prediction/reference pair.

Empty cases are never dropped; each row says which case applied (``status``):

==============  =====  =====  =====  ======================================
status          Dice   IoU    NSD    HD95 (mm)
==============  =====  =====  =====  ======================================
``both_empty``  1      1      1      0
``pred_empty``  0      0      0      image diagonal ``sqrt(sum((n_i s_i)^2))``
``ref_empty``   0      0      0      image diagonal
``ok``          computed
==============  =====  =====  =====  ======================================

All labels' bounding boxes come from one pass per volume (``scipy.ndimage.find_objects``); each
label is then scored inside the union of its two boxes only (counts and surfaces alike).

Example
-------
>>> import numpy as np
>>> ref = np.zeros((4, 4, 4), np.uint8); ref[1:3, 1:3, 1:3] = 1
>>> rows = evaluate_arrays(ref.copy(), ref, spacing_mm=(1, 1, 1), labels=[1, 2])
>>> [(r.label, r.dice, r.status) for r in rows]
[(1, 1.0, 'ok'), (2, 1.0, 'both_empty')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medseg.errors import GeometryMismatchError, InputError
from medseg.metrics.overlap import dice_from_counts, iou_from_counts
from medseg.metrics.surface import hd_percentile_mm, image_diagonal_mm, nsd, surface_distances_cropped
from medseg.metrics.surface_monai import compute_voxel_surface_distances, hd_percentile_mm_monai, nsd_monai
from medseg.volume import Volume

MODES = {
    "surface-distance": "surfel-based HD95/NSD as DeepMind surface-distance (area-weighted, voxel corners)",
    "monai": "voxel-based HD95/NSD as monai.metrics (edge voxels from erosion, counts, linear percentile)",
}
STATUSES = ("ok", "both_empty", "pred_empty", "ref_empty")


@dataclass
class LabelResult:
    """One row of the per-case table. Metrics are ``nan`` when ``status`` starts with ``error``."""

    label: int
    dice: float
    iou: float
    hd95_mm: float
    nsd: float
    status: str
    n_ref_voxels: int = 0
    n_pred_voxels: int = 0
    nsd_tolerance_mm: float = float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def tolerance_for(tolerance_mm: float | Mapping[int, float], label: int) -> float:
    """The NSD tolerance of ``label`` from one number or a mapping label -> mm."""
    if isinstance(tolerance_mm, Mapping):
        if label not in tolerance_mm:
            raise ValueError(f"no NSD tolerance given for label {label}")
        return float(tolerance_mm[label])
    return float(tolerance_mm)


def as_label_map(array: np.ndarray, *, name: str = "label map") -> np.ndarray:
    """Integer view of a label map; raises InputError for fractional or negative values."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise InputError(f"{name} holds non-integer values; labels must be whole numbers", code="bad_labels")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise InputError(f"{name} holds negative labels", code="bad_labels")
    return a


def labels_present(array: np.ndarray) -> list[int]:
    """Sorted label values > 0 in a label map (one pass)."""
    a = as_label_map(array)
    top = int(a.max(initial=0))
    if top < 65536:
        # every non-empty bin but 0 (a volume without background still has its label 1)
        return [int(k) for k in np.flatnonzero(np.bincount(a.ravel(), minlength=top + 1)) if k > 0]
    return [int(k) for k in np.unique(a) if k > 0]


def _boxes(a: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    top = max(labels)
    objs = ndimage.find_objects(a, max_label=top) if a.size else []
    return {k: (objs[k - 1] if k - 1 < len(objs) else None) for k in labels}


def _union(b1, b2) -> tuple[slice, ...]:
    if b1 is None:
        return b2
    if b2 is None:
        return b1
    return tuple(slice(min(s.start, t.start), max(s.stop, t.stop)) for s, t in zip(b1, b2))


def evaluate_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    labels: Sequence[int],
    tolerance_mm: float | Mapping[int, float] = 1.0,
    percent: float = 95.0,
    mode: str = "surface-distance",
) -> list[LabelResult]:
    """Score every label of ``pred`` against ``ref`` (same grid, arrays ``(z, y, x)``).

    Parameters
    ----------
    pred, ref : integer label maps of equal shape
    spacing_mm : (sz, sy, sx)
    labels : label values (> 0) to score; one row each, in this order
    tolerance_mm : NSD tolerance, one value or a mapping label -> mm
    percent : Hausdorff percentile (95 gives HD95)
    mode : ``"surface-distance"`` (surfel-based, default) or ``"monai"`` (voxel-based)
    """
    if mode not in MODES:
        raise ValueError(f"unknown metric mode '{mode}' (use one of {', '.join(MODES)})")
    pred = as_label_map(pred, name="prediction")
    ref = as_label_map(ref, name="reference")
    if pred.shape != ref.shape or pred.ndim != 3:
        raise GeometryMismatchError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    labels = [int(k) for k in labels]
    if any(k <= 0 for k in labels):
        raise ValueError(f"labels must be > 0 (0 is background), got {labels}")
    if not labels:
        return []
    diag = image_diagonal_mm(ref.shape, spacing_mm)
    boxes_ref, boxes_pred = _boxes(ref, labels), _boxes(pred, labels)
    rows = []
    for k in labels:
        tol = tolerance_for(tolerance_mm, k)
        if boxes_ref[k] is None and boxes_pred[k] is None:
            rows.append(LabelResult(k, 1.0, 1.0, 0.0, 1.0, "both_empty", 0, 0, tol))
            continue
        box = _union(boxes_ref[k], boxes_pred[k])
        r = ref[box] == k
        p = pred[box] == k
        n_ref, n_pred = int(np.count_nonzero(r)), int(np.count_nonzero(p))
        if n_ref == 0 or n_pred == 0:
            status = "pred_empty" if n_pred == 0 else "ref_empty"
            rows.append(LabelResult(k, 0.0, 0.0, diag, 0.0, status, n_ref, n_pred, tol))
            continue
        n_both = int(np.count_nonzero(r & p))
        dice = dice_from_counts(n_ref=n_ref, n_pred=n_pred, n_both=n_both)
        iou = iou_from_counts(n_ref=n_ref, n_pred=n_pred, n_both=n_both)
        if mode == "monai":
            vsd = compute_voxel_surface_distances(np.pad(r, 1), np.pad(p, 1), spacing_mm)
            hd, ns = hd_percentile_mm_monai(vsd, percent), nsd_monai(vsd, tol)
        else:
            sd = surface_distances_cropped(r, p, spacing_mm)
            hd, ns = hd_percentile_mm(sd, percent), nsd(sd, tol)
        rows.append(LabelResult(k, dice, iou, hd, ns, "ok", n_ref, n_pred, tol))
    return rows


def evaluate_case(
    pred_vol: Volume,
    ref_vol: Volume,
    *,
    labels: Sequence[int],
    tolerance_mm: float | Mapping[int, float] = 1.0,
    percent: float = 95.0,
    mode: str = "surface-distance",
) -> list[LabelResult]:
    """Score a predicted label volume against its reference on the same grid.

    Raises GeometryMismatchError (never resamples) when shape, spacing, origin or direction differ.
    """
    why = pred_vol.grid_mismatch(ref_vol)
    if why is not None:
        raise GeometryMismatchError(f"prediction and reference grids differ: {why}")
    return evaluate_arrays(pred_vol.array, ref_vol.array, spacing_mm=ref_vol.spacing_mm, labels=labels,
                           tolerance_mm=tolerance_mm, percent=percent, mode=mode)


def error_rows(labels: Sequence[int], status: str, tolerance_mm: float | Mapping[int, float]) -> list[LabelResult]:
    """Rows for a case that could not be scored (``status`` like ``error:geometry_mismatch``)."""
    nan = float("nan")
    out = []
    for k in labels:
        try:
            tol = tolerance_for(tolerance_mm, k)
        except ValueError:
            tol = nan
        out.append(LabelResult(int(k), nan, nan, nan, nan, status, 0, 0, tol))
    return out
