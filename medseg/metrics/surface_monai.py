"""MONAI-compatible, voxel-based HD95 and NSD (``mode="monai"``).

Reproduces the numbers of ``monai.metrics.compute_hausdorff_distance(percentile=95)`` and
``monai.metrics.compute_surface_dice`` (default ``use_subvoxels=False``) for non-empty masks:

* the edge of a mask is its voxels removed by one binary erosion (6-connected cross; outside the
  image counts as background);
* each edge voxel gets the Euclidean distance (mm) to the nearest edge voxel of the other mask,
  rounded to float32 as MONAI stores it;
* HD95 is the larger of the two directions' 95th percentiles with linear interpolation;
* NSD is the *count* of edge voxels within the tolerance over the count of all edge voxels.

This differs from the surfel-based default (``medseg.metrics.surface``), which weights by
surface area and measures between voxel corners; use it only to compare with MONAI-based work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.metrics.surface import check_mask_pair
from medseg.metrics.surface_stats import check_tolerance


@dataclass(frozen=True)
class VoxelSurfaceDistances:
    """Edge-voxel distances (mm, float32) in both directions."""

    distances_ref_to_pred_mm: np.ndarray
    distances_pred_to_ref_mm: np.ndarray


def edge_voxels(mask: np.ndarray) -> np.ndarray:
    """(k, ndim) indices of the voxels a binary erosion (6-connected cross in 3D, 4-connected in 2D)
    removes from ``mask``."""
    m = np.asarray(mask, dtype=bool)
    return np.argwhere(m & ~ndimage.binary_erosion(m))


def _nearest(src: np.ndarray, dst: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    if dst.shape[0] == 0:
        return np.full(src.shape[0], np.inf, dtype=np.float32)
    if src.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    d, _ = cKDTree(dst * spacing).query(src * spacing, k=1)
    return d.astype(np.float32)


def compute_voxel_surface_distances(ref: np.ndarray, pred: np.ndarray, spacing_mm) -> VoxelSurfaceDistances:
    """Edge-voxel distances between two binary masks (cropping is the caller's choice and does
    not change the result as long as the crop keeps one background voxel around the union or
    reaches the image border).

    Raises ValueError for masks that are not 2D/3D or differ in shape, or a bad spacing.
    """
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    check_mask_pair(ref, pred, spacing_mm)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    e_ref = edge_voxels(ref)
    e_pred = edge_voxels(pred)
    return VoxelSurfaceDistances(_nearest(e_ref, e_pred, spacing), _nearest(e_pred, e_ref, spacing))


def hd_percentile_mm_monai(sd: VoxelSurfaceDistances, percent: float = 95.0) -> float:
    """max over directions of the linear-interpolation percentile; ``inf`` if a mask is empty."""
    out = []
    for d in (sd.distances_ref_to_pred_mm, sd.distances_pred_to_ref_mm):
        if d.size == 0:
            return float("inf")
        out.append(float(np.quantile(d, np.float32(percent / 100.0))))  # float32 arithmetic, as torch.quantile
    return max(out)


def nsd_monai(sd: VoxelSurfaceDistances, tolerance_mm: float) -> float:
    """Fraction of edge voxels (both masks) within ``tolerance_mm`` of the other edge.

    Raises ValueError for a tolerance that is inf, nan or negative (as MONAI does).
    """
    check_tolerance(tolerance_mm)
    total = sd.distances_ref_to_pred_mm.size + sd.distances_pred_to_ref_mm.size
    if total == 0:
        return float("nan")
    tol = np.float32(tolerance_mm)
    within = np.count_nonzero(sd.distances_ref_to_pred_mm <= tol) + np.count_nonzero(
        sd.distances_pred_to_ref_mm <= tol
    )
    return float(within / total)
