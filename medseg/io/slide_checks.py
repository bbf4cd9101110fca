"""Checks of slide metadata that need no pixels: a resolution (um/px) where it enters, and a
pyramid's level table. Each raises :class:`~medseg.errors.InputError` naming the value and the file.

>>> check_mpp("0.5")
0.5
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medseg.errors import InputError

MPP_RANGE = (1e-3, 1e3)  # um/px a slide or a tiling resolution may have (1 nm .. 1 mm per pixel)
LEVEL_RATIO_TOL = 0.02  # relative disagreement allowed between a level's downsample and its size ratios


def check_mpp(value: Any, *, what: str = "mpp", path: str | Path | None = None) -> float:
    """``value`` as a float if it is a finite resolution within :data:`MPP_RANGE` um/px; otherwise
    ``InputError(code="bad_mpp")`` naming ``what`` (``--mpp``, ``slide metadata openslide.mpp-x``...)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    lo, hi = MPP_RANGE
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InputError(f"{what} = {value!r} is not a resolution: it must be a finite number of um per pixel "
                         f"between {lo:g} and {hi:g}", path=path, code="bad_mpp")
    return v


def check_pyramid(dims: list[tuple[int, int]], downsamples: list[float], *, path: str | Path | None = None) -> None:
    """Cheap consistency checks of a pyramid's level table (no pixel read): level 0 has the largest
    size, sizes shrink level by level, each level's width and height ratios to level 0 agree with
    each other and with its downsample (a level with a wrong aspect or a wrong size was replaced or
    damaged). Raises ``InputError(code="damaged_pyramid")``."""
    if not dims or any(w <= 0 or h <= 0 for w, h in dims):
        raise InputError(f"pyramid level sizes {dims} hold an empty level", path=path, code="damaged_pyramid")
    w0, h0 = dims[0]
    for i, ((w, h), ds) in enumerate(zip(dims, downsamples)):
        if not (math.isfinite(ds) and ds >= 1.0 - 1e-6):
            raise InputError(f"pyramid level {i} has downsample {ds}", path=path, code="damaged_pyramid")
        if i and (w > dims[i - 1][0] or h > dims[i - 1][1]):
            raise InputError(f"pyramid level {i} ({w} x {h}) is larger than level {i - 1} {dims[i - 1]}", path=path,
                             code="damaged_pyramid")
        rx, ry = w0 / w, h0 / h
        # integer sizes round: allow one pixel of rounding on top of the relative tolerance
        tol_x = LEVEL_RATIO_TOL * rx + rx / w
        tol_y = LEVEL_RATIO_TOL * ry + ry / h
        if abs(rx - ry) > tol_x + tol_y or abs(rx - ds) > tol_x + ds * LEVEL_RATIO_TOL \
                or abs(ry - ds) > tol_y + ds * LEVEL_RATIO_TOL:
            raise InputError(f"pyramid level {i} is {w} x {h} px, which does not match level 0 ({w0} x {h0}) at "
                             f"downsample {ds:.4g} (wrong aspect or size: a damaged or replaced level)", path=path,
                             code="damaged_pyramid")
