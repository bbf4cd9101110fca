"""Statistics of one surface-distance computation: mean distances, ASSD, surface overlap fractions.

Every function takes the distances of one case and label, computed once by
:func:`medseg.metrics.surface.compute_surface_distances` (surfels weighted by their area, or
contour length in 2D: DeepMind surface-distance) or by
:func:`medseg.metrics.surface_monai.compute_voxel_surface_distances` (edge voxels, each weighing 1:
MONAI). With weights ``w`` and distances ``d``:

* directed mean surface distance ``ref -> pred`` = ``sum(w_ref * d_ref) / sum(w_ref)`` (likewise
  ``pred -> ref``); surface-distance's ``compute_average_surface_distance`` returns the pair;
* ASSD (average symmetric surface distance) = ``(sum(w_ref d_ref) + sum(w_pred d_pred)) /
  (sum(w_ref) + sum(w_pred))``: the mean over both surfaces pooled, as MONAI's
  ``compute_average_surface_distance(symmetric=True)`` pools the edge voxels of both;
* surface overlap at tolerance ``t`` = ``sum(w_ref[d_ref <= t]) / sum(w_ref)`` per direction
  (surface-distance's ``compute_surface_overlap_at_tolerance``).

Empty surfaces: a distance to an empty surface is ``inf``; a statistic over no surface is ``nan``
(callers apply the documented empty-case conventions).

Example
-------
>>> import numpy as np
>>> from medseg.metrics.surface import compute_surface_distances
>>> a = np.zeros((4, 6), bool); a[1:3, 1:3] = True
>>> b = np.zeros_like(a); b[1:3, 2:4] = True              # shifted by one pixel along x
>>> sd = compute_surface_distances(a, b, spacing_mm=(1.0, 1.0))
>>> mean_surface_distances_mm(sd)
(0.5, 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def directions(sd: Any) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((d_ref, w_ref), (d_pred, w_pred))``: distances and weights of both directions.

    Surfel distances carry their areas (lengths in 2D); edge-voxel distances weigh 1 each.
    """
    d_rp = np.asarray(sd.distances_ref_to_pred_mm)
    d_pr = np.asarray(sd.distances_pred_to_ref_mm)
    if hasattr(sd, "areas_ref_mm2"):
        return (d_rp, np.asarray(sd.areas_ref_mm2)), (d_pr, np.asarray(sd.areas_pred_mm2))
    return (d_rp, np.ones(d_rp.size)), (d_pr, np.ones(d_pr.size))


def _weighted_mean(d: np.ndarray, w: np.ndarray) -> float:
    if d.size == 0:
        return float("nan")
    if np.isinf(d).any():
        return float("inf")
    return float(np.sum(w * d.astype(np.float64)) / np.sum(w))


def mean_surface_distances_mm(sd: Any) -> tuple[float, float]:
    """Directed mean surface distances ``(ref -> pred, pred -> ref)`` in mm.

    With one surface empty, surfel distances give ``(inf, nan)`` / ``(nan, inf)`` as surface-distance
    does; edge-voxel distances give ``(inf, inf)`` as MONAI does.
    """
    (d_r, w_r), (d_p, w_p) = directions(sd)
    if not hasattr(sd, "areas_ref_mm2") and (d_r.size == 0) != (d_p.size == 0):
        return float("inf"), float("inf")
    return _weighted_mean(d_r, w_r), _weighted_mean(d_p, w_p)


def assd_mm(sd: Any) -> float:
    """Average symmetric surface distance (mm): both surfaces' distances pooled, weighted."""
    (d_r, w_r), (d_p, w_p) = directions(sd)
    if d_r.size == 0 and d_p.size == 0:
        return float("nan")
    if d_r.size == 0 or d_p.size == 0:
        return float("inf")
    return _weighted_mean(np.concatenate([d_r, d_p]), np.concatenate([w_r, w_p]))


def check_tolerance(tolerance_mm: float) -> float:
    """The tolerance as a float; ValueError for inf, nan or a negative number."""
    t = float(tolerance_mm)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    return t


def _within(d: np.ndarray, tol: float) -> np.ndarray:
    # edge-voxel distances are float32 (as MONAI keeps them): compare in float32 as MONAI does
    return d <= (np.float32(tol) if d.dtype == np.float32 else tol)


def surface_overlap(sd: Any, tolerance_mm: float) -> tuple[float, float]:
    """Fractions ``(ref, pred)`` of each surface within ``tolerance_mm`` of the other (``nan`` for
    an empty surface)."""
    tol = check_tolerance(tolerance_mm)
    out = []
    for d, w in directions(sd):
        total = float(np.sum(w))
        out.append(float(np.sum(w[_within(d, tol)]) / total) if d.size and total > 0 else float("nan"))
    return out[0], out[1]
