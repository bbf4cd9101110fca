"""Voxel grids and the mapping between them (no voxel data).

Grid convention used by all resampling in medseg
------------------------------------------------
A grid is ``shape`` voxels in (z, y, x) with ``spacing_mm``, ``origin_mm`` (RAS position of the
*centre* of voxel ``[0, 0, 0]``) and ``direction`` (columns = RAS unit vectors of the array
axes), exactly as :class:`medseg.volume.Volume`.

:func:`spacing_grid` resamples with the **field of view preserved**: the physical box covered by
the voxels (from the outer face of the first voxel to the outer face of the last, i.e. the
centre extent plus half a voxel on each side) is the same before and after. Along an axis with
``n`` voxels of spacing ``s`` and a requested spacing ``t``::

    n_new       = max(1, round(n * s / t))
    spacing_new = n * s / n_new                     # == t whenever n * s / t is an integer
    origin_new  = origin + direction @ ((spacing_new - s) / 2)   (per axis)

so output voxel ``j`` sits at input index ``(j + 0.5) * spacing_new / s - 0.5``. This is the
mapping of ``scipy.ndimage.zoom(grid_mode=True)``, ``torch.nn.functional.interpolate(
align_corners=False)``, scikit-image ``resize`` and therefore nnU-Net's resampling. The stored
spacing is the *actual* one (it differs from the request by less than half an output voxel over
the whole extent, e.g. 0.2% for 200 voxels), so the geometry written to disk is exact and
:func:`medseg.preprocess.resample_to_grid` back to the input grid is exact in physical space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.volume import Volume, check_geometry, geometry_to_affine

_DIAG_TOL = 1e-6
_VOLUME_DIRECTION = Volume(np.zeros((1, 1, 1), np.uint8)).direction  # a Volume made without geometry


@dataclass(frozen=True)
class Grid:
    """A voxel grid without voxel data (shape, spacing, origin, direction), as in Volume."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(o) for o in self.origin_mm))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid shape must be three positive sizes, got {self.shape}")
        check_geometry(self.spacing_mm, self.direction)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (z, y, x, 1) indices to RAS mm."""
        return geometry_to_affine(self.spacing_mm, self.origin_mm, self.direction)

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-safe) form."""
        return {"shape": list(self.shape), "spacing_mm": list(self.spacing_mm),
                "origin_mm": list(self.origin_mm), "direction": self.direction.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(tuple(d["shape"]), tuple(d["spacing_mm"]), tuple(d["origin_mm"]), np.asarray(d["direction"]))

    def voxel_centres_mm(self) -> np.ndarray:
        """RAS coordinates of every voxel centre, shape ``(*shape, 3)`` (float64)."""
        idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in self.shape], indexing="ij"), -1)
        return idx @ (self.direction * np.asarray(self.spacing_mm)[None, :]).T + np.asarray(self.origin_mm)


def grid_of(obj: Volume | Grid) -> Grid:
    """The grid of a Volume (or the Grid itself)."""
    if isinstance(obj, Grid):
        return obj
    if isinstance(obj, Volume):
        return Grid(obj.shape, obj.spacing_mm, obj.origin_mm, obj.direction)
    raise TypeError(f"expected a Volume or Grid, got {type(obj).__name__}")


def spacing_grid(grid: Grid, spacing_mm: Sequence[float]) -> Grid:
    """The field-of-view-preserving grid with (about) ``spacing_mm`` (z, y, x); see module doc.

    >>> g = Grid((10, 4, 5), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    >>> h = spacing_grid(g, (1.5, 1.0, 2.0))
    >>> h.shape, h.spacing_mm, h.origin_mm
    ((20, 4, 2), (1.5, 1.0, 2.5), (-0.75, 0.0, 0.75))
    """
    target = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if target.shape != (3,) or not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ValueError(f"target spacing must be three positive numbers in mm (z, y, x), got {list(spacing_mm)}")
    n = np.asarray(grid.shape, dtype=np.float64)
    s = np.asarray(grid.spacing_mm)
    return shape_grid(grid, np.maximum(1, np.round(n * s / target)).astype(int))


def shape_grid(grid: Grid, shape: Sequence[int]) -> Grid:
    """The field-of-view-preserving grid with ``shape`` voxels (z, y, x): spacing ``n * s / n_new``.

    >>> g = Grid((10, 4, 5), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    >>> h = shape_grid(g, (20, 4, 2))
    >>> h.spacing_mm, h.origin_mm
    ((1.5, 1.0, 2.5), (-0.75, 0.0, 0.75))
    """
    n_new = np.asarray(shape).reshape(-1)
    if n_new.shape != (3,) or np.any(n_new != np.round(n_new)) or np.any(n_new < 1):
        raise ValueError(f"target shape must be three positive whole numbers (z, y, x), got {list(shape)}")
    n_new = n_new.astype(int)
    n = np.asarray(grid.shape, dtype=np.float64)
    s = np.asarray(grid.spacing_mm)
    s_new = n * s / n_new
    origin = np.asarray(grid.origin_mm) + grid.direction @ ((s_new - s) / 2.0)
    return Grid(tuple(n_new.tolist()), tuple(s_new.tolist()), tuple(origin.tolist()), grid.direction)


def index_grid(shape: Sequence[int], spacing_mm: Sequence[float]) -> Grid:
    """The grid of ``Volume(array, spacing_mm)`` for an array of ``shape``: origin 0, Volume's default
    direction. Resampling to a spacing or shape depends only on shape and spacing, so arrays without
    geometry are resampled on this grid (:func:`medseg.preprocess.resample.resample_array`)."""
    return Grid(tuple(shape), tuple(spacing_mm), (0.0, 0.0, 0.0), _VOLUME_DIRECTION.copy())


def index_map(src: Grid, dst: Grid) -> np.ndarray:
    """4x4 matrix taking homogeneous ``dst`` voxel indices to continuous ``src`` voxel indices."""
    return np.linalg.solve(src.affine, dst.affine)


def separable_map(m: np.ndarray, *, tol: float = _DIAG_TOL) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """Split an index map into per-axis ``pos_k = scale_k * j_{perm[k]} + offset_k`` if it is a
    scaled axis permutation (each src axis depends on one dst axis); else None (oblique).

    Returns ``(perm, scale, offset)`` with ``perm[k]`` = the dst axis feeding src axis ``k``.
    """
    lin = m[:3, :3]
    perm = [int(np.argmax(np.abs(lin[k]))) for k in range(3)]
    if sorted(perm) != [0, 1, 2]:
        return None
    scale = np.array([lin[k, perm[k]] for k in range(3)])
    rest = lin.copy()
    for k in range(3):
        rest[k, perm[k]] = 0.0
    if np.max(np.abs(rest)) > tol * max(1.0, float(np.max(np.abs(scale)))):
        return None
    return perm, scale, m[:3, 3].copy()
