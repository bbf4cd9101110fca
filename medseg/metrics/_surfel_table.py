"""Surface-element (surfel) areas of the 2x2x2 neighbourhood codes.

Each corner of the voxel grid has an 8-bit code: which of the 8 voxels around it are inside
the mask (bit ``1 << (7 - (4*dz + 2*dy + dx))`` for the voxel at offset ``(dz, dy, dx)`` in
{0, 1}^3, offset 0 being the lower index). A marching-cubes triangulation with vertices at edge
midpoints turns every code into a few triangles. Their area in mm^2 under anisotropic spacing
follows from each triangle's normal ``(nz, ny, nx)`` (length = area at unit spacing):
``|(nz * sy * sx, ny * sz * sx, nx * sz * sy)|``.

Provenance: the per-code triangle normals are the marching-cubes table that defines the surfel
areas of DeepMind's surface-distance (Nikolov et al. 2018, Apache-2.0). The metric definition
depends on it, so the *data* is reproduced here (absolute normal components, in eighths,
counted per type) so that our numbers equal that reference; the code is ours.
``tests/metrics/test_surface.py`` checks the table against the package for several spacings.
"""

from __future__ import annotations

import numpy as np

# Absolute normal components (z, y, x) in units of 1/8 of a voxel face; one column per type.
TRIANGLE_TYPES = np.array(
    [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 0, 0), (0, 4, 0), (0, 0, 4), (0, 2, 2), (2, 0, 2), (2, 2, 0)],
    dtype=np.float64,
) / 8.0

# For code c, digit t of _COUNTS[c] = how many triangles of type t the code's surface holds.
_COUNTS = (
    '000000000', '100000000', '100000000', '000000002', '100000000', '000000020', '200000000', '110100000',
    '100000000', '200000000', '000000020', '110100000', '000000002', '110100000', '110100000', '000200000',
    '100000000', '000000200', '200000000', '110010000', '200000000', '110001000', '300000000', '220000000',
    '200000000', '100000200', '100000020', '101000110', '100000002', '101000101', '210100000', '110100000',
    '100000000', '200000000', '000000200', '110010000', '200000000', '100000020', '100000200', '101000110',
    '200000000', '300000000', '110001000', '220000000', '100000002', '210100000', '101000101', '110100000',
    '000000002', '110010000', '110010000', '000020000', '100000002', '101000011', '210010000', '110010000',
    '100000002', '210010000', '101000011', '110010000', '000000004', '100000002', '100000002', '000000002',
    '100000000', '200000000', '200000000', '100000002', '000000200', '110001000', '100000200', '101000101',
    '200000000', '300000000', '100000020', '210100000', '110010000', '220000000', '101000110', '110100000',
    '000000020', '110001000', '100000020', '101000011', '110001000', '000002000', '210001000', '110001000',
    '100000020', '210001000', '000000040', '100000020', '101000011', '110001000', '100000020', '000000020',
    '200000000', '300000000', '100000200', '210010000', '100000200', '210001000', '000000400', '100000200',
    '300000000', '400000000', '210001000', '300000000', '210010000', '300000000', '100000200', '200000000',
    '110100000', '220000000', '101000110', '110010000', '101000101', '110001000', '100000200', '000000200',
    '210100000', '300000000', '100000020', '200000000', '100000002', '200000000', '200000000', '100000000',
    '100000000', '200000000', '200000000', '100000002', '200000000', '100000020', '300000000', '210100000',
    '000000200', '100000200', '110001000', '101000101', '110010000', '101000110', '220000000', '110100000',
    '200000000', '100000200', '300000000', '210010000', '300000000', '210001000', '400000000', '300000000',
    '100000200', '000000400', '210001000', '100000200', '210010000', '100000200', '300000000', '200000000',
    '000000020', '100000020', '110001000', '101000011', '100000020', '000000040', '210001000', '100000020',
    '110001000', '210001000', '000002000', '110001000', '101000011', '100000020', '110001000', '000000020',
    '110100000', '101000110', '220000000', '110010000', '210100000', '100000020', '300000000', '200000000',
    '101000101', '100000200', '110001000', '000000200', '100000002', '200000000', '200000000', '100000000',
    '000000002', '100000002', '100000002', '000000004', '110010000', '101000011', '210010000', '100000002',
    '110010000', '210010000', '101000011', '100000002', '000020000', '110010000', '110010000', '000000002',
    '110100000', '101000101', '210100000', '100000002', '220000000', '110001000', '300000000', '200000000',
    '101000110', '100000200', '100000020', '200000000', '110010000', '000000200', '200000000', '100000000',
    '110100000', '210100000', '101000101', '100000002', '101000110', '100000020', '100000200', '200000000',
    '220000000', '300000000', '110001000', '200000000', '110010000', '200000000', '000000200', '100000000',
    '000200000', '110100000', '110100000', '000000002', '110100000', '000000020', '200000000', '100000000',
    '110100000', '200000000', '000000020', '100000000', '000000002', '100000000', '100000000', '000000000',
)


def _count_matrix() -> np.ndarray:
    return np.array([[int(ch) for ch in row] for row in _COUNTS], dtype=np.float64)  # (256, 9)


COUNTS = _count_matrix()


def surfel_area_table(spacing_mm) -> np.ndarray:
    """Surface area (mm^2) of each of the 256 neighbourhood codes for voxel spacing ``(sz, sy, sx)``.

    Returns
    -------
    (256,) float64; entries 0 and 255 (all outside / all inside) are 0.
    """
    sz, sy, sx = (float(s) for s in spacing_mm)
    scaled = TRIANGLE_TYPES * np.array([sy * sx, sz * sx, sz * sy])
    return COUNTS @ np.sqrt(np.sum(scaled * scaled, axis=1))


def contour_length_table(spacing_mm) -> np.ndarray:
    """Contour length (mm) of each of the 16 codes of a 2x2 pixel neighbourhood (2D masks).

    Bits: ``8, 4, 2, 1`` for the pixels at offsets ``(0, 0), (0, 1), (1, 0), (1, 1)`` (lower index =
    higher bit, as in 3D). Marching squares with vertices at edge midpoints: one or three pixels
    inside cut one corner (a half diagonal, ``0.5 * sqrt(sy^2 + sx^2)``); two pixels in one row give
    a line across the columns (length ``sx``), two in one column a line across the rows (``sy``);
    two diagonal pixels give two half diagonals. Codes 0 and 15 have no contour.

    Returns
    -------
    (16,) float64 for spacing ``(sy, sx)``.
    """
    sy, sx = (float(s) for s in spacing_mm)
    half_diag = 0.5 * float(np.hypot(sy, sx))
    out = np.zeros(16, dtype=np.float64)
    for code in range(1, 15):
        tl, tr, bl, br = (code >> 3) & 1, (code >> 2) & 1, (code >> 1) & 1, code & 1
        inside = tl + tr + bl + br
        if inside in (1, 3):
            out[code] = half_diag
        elif tl == tr:       # one row inside, the other outside: the contour runs along x
            out[code] = sx
        elif tl == bl:       # one column inside: the contour runs along y
            out[code] = sy
        else:                # two diagonal pixels
            out[code] = 2.0 * half_diag
    return out


def element_size_table(spacing_mm) -> np.ndarray:
    """Surfel areas (3 spacings: 3D) or contour lengths (2 spacings: 2D) per neighbourhood code."""
    if len(spacing_mm) == 2:
        return contour_length_table(spacing_mm)
    return surfel_area_table(spacing_mm)
