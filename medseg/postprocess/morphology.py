"""Binary opening and closing with ellipsoidal structuring elements given in millimetres."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.postprocess.components import bounding_box


def ellipsoid(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Voxels within ``radius_mm`` of the centre on a grid of ``spacing_mm``: an anisotropic ball.

    The half-size along axis ``i`` is ``floor(radius_mm / spacing_mm[i])``; an axis whose spacing
    exceeds the radius gets a flat element (no effect along it).

    Examples
    --------
    >>> ellipsoid(2.0, (1.0, 2.0)).astype(int).tolist()   # half-size 2 voxels, then 1 voxel
    [[0, 1, 0], [0, 1, 0], [1, 1, 1], [0, 1, 0], [0, 1, 0]]
    """
    sp = np.asarray(spacing_mm, dtype=float)
    if radius_mm <= 0 or np.any(sp <= 0):
        raise ConfigError(f"radius_mm ({radius_mm}) and spacing_mm ({tuple(spacing_mm)}) must be positive")
    half = np.floor(radius_mm / sp + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    dist2 = sum(g * g for g in grids)
    return dist2 <= radius_mm * radius_mm * (1 + 1e-9)


def _apply(mask, radius_mm, spacing_mm, first, second) -> np.ndarray:
    """``second(first(mask))`` with the array continued beyond its border by edge replication.

    Only the mask's bounding box plus a margin of ``2 * half + 1`` voxels is processed (outside it
    all is background); where that box meets the array border the block is edge-padded by the same
    margin, so the result equals the operation on an infinitely edge-extended array.
    """
    mask = np.asarray(mask, dtype=bool)
    if len(spacing_mm) != mask.ndim:
        raise ConfigError(f"spacing_mm {tuple(spacing_mm)} must have one value per mask axis {mask.shape}")
    se = ellipsoid(radius_mm, spacing_mm)
    margin = [s + 2 for s in se.shape]  # s = 2 * half + 1, plus one for safety
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask, margin=margin)
    if box is None:
        return out
    pad = [(m if sl.start == 0 else 0, m if sl.stop == n else 0) for sl, n, m in zip(box, mask.shape, margin)]
    sub = np.pad(mask[box], pad, mode="edge")
    res = second(first(sub, structure=se), structure=se)
    out[box] = res[tuple(slice(a, a + (sl.stop - sl.start)) for (a, _), sl in zip(pad, box))]
    return out


def binary_opening(mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Erosion then dilation by an ellipsoid of ``radius_mm``: removes parts thinner than the ball.

    Beyond the array border the mask is taken to continue as it is at the border (edge
    replication), so an object cut by the field of view is not eaten from its cut face and an
    object near the border is not glued to it.

    Examples
    --------
    >>> m = np.zeros((7, 7), bool); m[1:6, 1:6] = True; m[0, 6] = True   # 5 x 5 square, a lone voxel
    >>> int(binary_opening(m, radius_mm=1.0, spacing_mm=(1.0, 1.0)).sum())  # lone voxel and corners go
    21
    """
    return _apply(mask, radius_mm, spacing_mm, ndimage.binary_erosion, ndimage.binary_dilation)


def binary_closing(mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """Dilation then erosion by an ellipsoid of ``radius_mm``: closes gaps narrower than the ball.

    Border handling as in :func:`binary_opening`; unlike ``scipy.ndimage.binary_closing`` nothing
    is lost at the array border.

    Examples
    --------
    >>> m = np.array([[1, 1, 0, 1, 1]], bool)
    >>> binary_closing(m, radius_mm=1.0, spacing_mm=(1.0, 1.0)).astype(int).tolist()
    [[1, 1, 1, 1, 1]]
    """
    return _apply(mask, radius_mm, spacing_mm, ndimage.binary_dilation, ndimage.binary_erosion)
