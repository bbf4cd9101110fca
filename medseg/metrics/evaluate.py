"""Case-level scoring: Dice, IoU, HD95, NSD (and the metrics selected from
:mod:`medseg.metrics.catalog`) for every label of one prediction/reference pair, 2D or 3D.

Empty cases are never dropped; each row says which case applied (``status``):

==============  =====  =====  =====  ======================================
status          Dice   IoU    NSD    HD95 (mm)
==============  =====  =====  =====  ======================================
``both_empty``  1      1      1      0
``pred_empty``  0      0      0      image diagonal ``sqrt(sum((n_i s_i)^2))``
``ref_empty``   0      0      0      image diagonal
``ok``          computed
==============  =====  =====  =====  ======================================

(the other metrics' conventions: :mod:`medseg.metrics.label_metrics`).

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

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.errors import GeometryMismatchError, InputError
from medseg.metrics.catalog import DEFAULT_METRICS
from medseg.metrics.label_metrics import EMPTY_REFERENCE, label_values, needs_surface, status_of_counts
from medseg.metrics.surface import image_diagonal_mm, surface_distances_cropped
from medseg.metrics.surface_monai import compute_voxel_surface_distances
from medseg.volume import Volume

MODES = {
    "surface-distance": "surfel-based HD95/NSD as DeepMind surface-distance (area-weighted, voxel corners)",
    "monai": "voxel-based HD95/NSD as monai.metrics (edge voxels from erosion, counts, linear percentile)",
}
STATUSES = ("ok", "both_empty", "pred_empty", "ref_empty")


@dataclass
class LabelResult:
    """One row of the per-case table. Metrics are ``nan`` when ``status`` starts with ``error``
    (until the cohort enters them with their worst values). ``extra`` holds the metrics selected
    beyond the default four (column -> value)."""

    label: int
    dice: float
    iou: float
    hd95_mm: float
    nsd: float
    status: str
    n_ref_voxels: int = 0
    n_pred_voxels: int = 0
    nsd_tolerance_mm: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    def value(self, column: str) -> float:
        return float(getattr(self, column)) if column in DEFAULT_METRICS else float(self.extra[column])


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


def check_label_maps(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> None:
    """GeometryMismatchError saying what is wrong unless both maps are 2D or 3D, of one shape, with
    one spacing per axis."""
    for name, a in (("prediction", pred), ("reference", ref)):
        if a.ndim not in (2, 3):
            raise GeometryMismatchError(f"{name} is a {a.ndim}D array of shape {a.shape}; label maps must be "
                                        "2D (y, x) or 3D (z, y, x)")
    if pred.shape != ref.shape:
        raise GeometryMismatchError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing_mm) != ref.ndim:
        raise GeometryMismatchError(f"{ref.ndim}D label maps need {ref.ndim} spacings, got {tuple(spacing_mm)}")


def _columns(metrics: Sequence[str] | None) -> list[str]:
    return list(DEFAULT_METRICS) + [c for c in (metrics or []) if c not in DEFAULT_METRICS]


def voxel_size_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in ml (mm^3 / 1000); for 2D masks the area of one pixel in mm^2."""
    size = float(np.prod(np.asarray(spacing_mm, dtype=np.float64)))
    return size / 1000.0 if len(spacing_mm) == 3 else size


def evaluate_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    labels: Sequence[int],
    tolerance_mm: float | Mapping[int, float] = 1.0,
    percent: float = 95.0,
    mode: str = "surface-distance",
    metrics: Sequence[str] | None = None,
    empty_reference: str = "score",
) -> list[LabelResult]:
    """Score every label of ``pred`` against ``ref`` (same grid, arrays ``(z, y, x)`` or ``(y, x)``).

    Parameters
    ----------
    pred, ref : integer label maps of equal shape, 3D, or 2D (then surface-distance's 2D definitions:
        contours with lengths, and ``spacing_mm`` is ``(sy, sx)``)
    spacing_mm : (sz, sy, sx), or (sy, sx) for 2D maps
    labels : label values (> 0) to score; one row each, in this order
    tolerance_mm : NSD (and surface overlap) tolerance, one value or a mapping label -> mm
    percent : Hausdorff percentile of the ``hd95_mm`` column (95 gives HD95)
    mode : ``"surface-distance"`` (surfel-based, default) or ``"monai"`` (voxel-based)
    metrics : metric columns (:func:`medseg.metrics.catalog.parse_metrics`) scored beyond the default
        four, into ``LabelResult.extra``; all come from the one surface computation per label
    empty_reference : ``"score"`` (fixed values, default) or ``"nan"`` (MONAI: nan, left out of means)
    """
    if mode not in MODES:
        raise ValueError(f"unknown metric mode '{mode}' (use one of {', '.join(MODES)})")
    if empty_reference not in EMPTY_REFERENCE:
        raise ValueError(f"empty_reference must be one of {', '.join(EMPTY_REFERENCE)}, got {empty_reference!r}")
    pred = as_label_map(pred, name="prediction")
    ref = as_label_map(ref, name="reference")
    check_label_maps(pred, ref, spacing_mm)
    labels = [int(k) for k in labels]
    if any(k <= 0 for k in labels):
        raise ValueError(f"labels must be > 0 (0 is background), got {labels}")
    if not labels:
        return []
    columns = _columns(metrics)
    surface = needs_surface(columns)
    spacing = tuple(float(s) for s in spacing_mm)
    common: dict[str, Any] = {"n_total": int(ref.size), "voxel_ml": voxel_size_ml(spacing),
              "diag_mm": image_diagonal_mm(ref.shape, spacing), "mode": mode, "percent": percent,
              "empty_reference": empty_reference}
    boxes_ref, boxes_pred = _boxes(ref, labels), _boxes(pred, labels)
    rows = []
    for k in labels:
        tol = tolerance_for(tolerance_mm, k)
        n_ref = n_pred = n_both = 0
        sd: Any = None
        if boxes_ref[k] is not None or boxes_pred[k] is not None:
            box = _union(boxes_ref[k], boxes_pred[k])
            r = ref[box] == k
            p = pred[box] == k
            n_ref, n_pred = int(np.count_nonzero(r)), int(np.count_nonzero(p))
            n_both = int(np.count_nonzero(r & p))
            if n_ref and n_pred and surface:
                if mode == "monai":
                    sd = compute_voxel_surface_distances(np.pad(r, 1), np.pad(p, 1), spacing)
                else:
                    sd = surface_distances_cropped(r, p, spacing)
        vals = label_values(columns, n_ref=n_ref, n_pred=n_pred, n_both=n_both, tol=tol, sd=sd, **common)
        rows.append(LabelResult(k, vals["dice"], vals["iou"], vals["hd95_mm"], vals["nsd"],
                                status_of_counts(n_ref, n_pred), n_ref, n_pred, tol,
                                {c: vals[c] for c in columns[len(DEFAULT_METRICS):]}))
    return rows


def is_2d(vol: Volume) -> bool:
    """True for a volume read from a 2D file (a 2D NIfTI or a PNG/TIFF mask): one slice, marked so."""
    return bool(vol.meta.get("ndim") == 2) and vol.shape[0] == 1


def evaluate_case(
    pred_vol: Volume,
    ref_vol: Volume,
    *,
    labels: Sequence[int],
    tolerance_mm: float | Mapping[int, float] = 1.0,
    percent: float = 95.0,
    mode: str = "surface-distance",
    metrics: Sequence[str] | None = None,
    empty_reference: str = "score",
) -> list[LabelResult]:
    """Score a predicted label volume against its reference on the same grid.

    A reference read from a 2D file (:func:`is_2d`) is scored with the 2D definitions.
    Raises GeometryMismatchError (never resamples) when shape, spacing, origin or direction differ.
    """
    why = pred_vol.grid_mismatch(ref_vol)
    if why is not None:
        raise GeometryMismatchError(f"prediction and reference grids differ: {why}")
    pred, ref, spacing = pred_vol.array, ref_vol.array, tuple(ref_vol.spacing_mm)
    if is_2d(ref_vol):
        pred, ref, spacing = pred[0], ref[0], spacing[1:]
    return evaluate_arrays(pred, ref, spacing_mm=spacing, labels=labels, tolerance_mm=tolerance_mm,
                           percent=percent, mode=mode, metrics=metrics, empty_reference=empty_reference)


def error_rows(labels: Sequence[int], status: str, tolerance_mm: float | Mapping[int, float], *,
               metrics: Sequence[str] | None = None,
               values: Mapping[int, Mapping[str, float]] | None = None) -> list[LabelResult]:
    """Rows for a case that could not be scored (``status`` like ``error:geometry_mismatch``):
    ``nan`` metrics, or ``values[label]`` (the worst values the cohort enters them with)."""
    nan = math.nan
    out = []
    for k in labels:
        try:
            tol = tolerance_for(tolerance_mm, k)
        except ValueError:
            tol = nan
        v = dict((values or {}).get(int(k), {}))
        vals = {c: float(v.get(c, nan)) for c in _columns(metrics)}
        out.append(LabelResult(int(k), vals["dice"], vals["iou"], vals["hd95_mm"], vals["nsd"], status, 0, 0, tol,
                               {c: vals[c] for c in _columns(metrics)[len(DEFAULT_METRICS):]}))
    return out
