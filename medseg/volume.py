"""The one image type of medseg: an array in (z, y, x) plus its physical grid.

Conventions
-----------
* ``array`` is indexed ``[z, y, x]`` (slowest to fastest axis of the file). For a NIfTI file this
  is nibabel's ``(i, j, k)`` array transposed to ``(k, j, i)``; for SimpleITK it is exactly
  ``sitk.GetArrayFromImage``.
* ``spacing_mm`` is in the same order as the array axes: ``(sz, sy, sx)``.
* World coordinates are **RAS+ millimetres** (the NIfTI convention). ``origin_mm`` is the RAS
  position of the centre of voxel ``[0, 0, 0]``; column ``k`` of ``direction`` is the RAS unit
  vector along array axis ``k``. Conversion to and from ITK's LPS happens only in ``medseg.io``.

Example
-------
>>> import numpy as np
>>> v = Volume(np.zeros((2, 3, 4)), spacing_mm=(3.0, 1.0, 1.0))
>>> v.affine[:3, 3].tolist(), v.shape
([0.0, 0.0, 0.0], (2, 3, 4))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_ORTHO_TOL = 1e-4


@dataclass(frozen=True)
class Volume:
    """Array in (z, y, x) with spacing (mm), origin (RAS mm) and direction (3x3, columns = axes)."""

    array: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: _default_direction())
    is_label: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(o) for o in self.origin_mm))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array in (z, y, x); got shape {self.array.shape}")
        check_geometry(self.spacing_mm, self.direction)

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(z, y, x, 1)`` indices to RAS mm."""
        return geometry_to_affine(self.spacing_mm, self.origin_mm, self.direction)

    @property
    def orientation(self) -> str:
        """Three-letter code of the RAS direction each of the axes (x, y, z) points *to*,
        as nibabel's ``aff2axcodes`` names a NIfTI file (e.g. ``'RAS'``, ``'LPS'``)."""
        return orientation_code(self.direction)

    def with_array(self, array: np.ndarray, *, is_label: bool | None = None) -> Volume:
        """Same grid, new voxels (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"with_array: shape {array.shape} differs from grid {self.array.shape}")
        return replace(self, array=array, is_label=self.is_label if is_label is None else is_label)

    def same_grid(self, other: Volume, *, tol_mm: float = 1e-4) -> bool:
        """True when shape and affine agree (affine entries to ``tol_mm``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=tol_mm, rtol=0))

    def grid_mismatch(self, other: Volume, *, tol_mm: float = 1e-4) -> str | None:
        """Human-readable reason the two grids differ, or None."""
        if self.shape != other.shape:
            return f"shape {self.shape} vs {other.shape}"
        if not np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm, rtol=0):
            return f"spacing {_fmt(self.spacing_mm)} vs {_fmt(other.spacing_mm)} mm"
        if not np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm, rtol=0):
            return f"origin {_fmt(self.origin_mm)} vs {_fmt(other.origin_mm)} mm"
        if not np.allclose(self.direction, other.direction, atol=tol_mm, rtol=0):
            return "direction cosines differ"
        return None


def _fmt(t: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in t) + ")"


def _default_direction() -> np.ndarray:
    # array axes (z, y, x) along RAS (S, A, R): the NIfTI identity affine transposed to (z, y, x).
    return np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def check_geometry(spacing_mm: tuple[float, ...], direction: np.ndarray) -> None:
    """Raise ValueError for non-positive / non-finite spacing or a non-orthonormal direction."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three finite positive numbers in mm, got {tuple(sp.tolist())}")
    d = np.asarray(direction, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("direction matrix has non-finite entries")
    if not np.allclose(d.T @ d, np.eye(3), atol=_ORTHO_TOL):
        raise ValueError("direction matrix is not orthonormal (skewed or scaled axes)")


def geometry_to_affine(spacing_mm, origin_mm, direction) -> np.ndarray:
    """Affine (4x4) from (z, y, x) indices to RAS mm."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction, dtype=np.float64) * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    a[:3, 3] = origin_mm
    return a


def affine_to_geometry(affine: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Split a (z, y, x)->RAS affine into spacing, origin and direction.

    Raises ValueError when a column has zero/non-finite length (degenerate spacing).
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("affine has non-finite entries")
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine gives zero spacing on an axis: {tuple(spacing.tolist())}")
    direction = m / spacing[None, :]
    return tuple(spacing.tolist()), tuple(a[:3, 3].tolist()), direction


def orientation_code(direction: np.ndarray) -> str:
    """Orientation code for axes (x, y, z) = array axes (2, 1, 0), as nibabel's aff2axcodes."""
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    d = np.asarray(direction)
    code = []
    for axis in (2, 1, 0):
        col = d[:, axis]
        k = int(np.argmax(np.abs(col)))
        code.append(labels[k][1] if col[k] > 0 else labels[k][0])
    return "".join(code)
