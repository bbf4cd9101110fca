"""Value checks on freshly read volumes: finite intensities, integer non-negative labels.

``read_volume(path, kind="image"|"label")`` runs these; they can also be called directly.

Example
-------
>>> import numpy as np
>>> from medseg.volume import Volume
>>> v = check_label(Volume(np.array([[[0.0, 1.0], [2.0, 2.0]]])), "seg.nii.gz")
>>> v.array.dtype.name, v.is_label
('uint8', True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume


def check_image(vol: Volume, path: str | Path | None = None) -> Volume:
    """Return ``vol`` unchanged; raise InputError(code='non_finite') when a voxel is NaN or +-Inf."""
    a = vol.array
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = ~np.isfinite(a)
        n = int(bad.sum())
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{n} voxel(s) are NaN or infinite (first at (z, y, x) = {first}); "
                         "fix or mask them before processing", path=path, code="non_finite")
    return vol


def check_label(vol: Volume, path: str | Path | None = None) -> Volume:
    """Validate a label map and return it with an integer dtype and ``is_label=True``.

    Float labels that hold exact integers are converted to the smallest unsigned integer type
    that holds them (uint8, uint16 or uint32). Raises InputError with code ``non_integer_labels``
    for NaN/Inf, fractional or negative values.
    """
    a = vol.array
    if a.dtype == np.bool_:
        return vol.with_array(a.astype(np.uint8), is_label=True)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError("label map has NaN or infinite values", path=path, code="non_integer_labels")
        frac = a != np.round(a)
        if frac.any():
            example = float(a[frac].flat[0])
            raise InputError(f"label map has {int(frac.sum())} non-integer value(s) (e.g. {example:g}); "
                             "is this an image or a probability map rather than a label map?", path=path,
                             code="non_integer_labels")
    elif a.dtype.kind not in "iu":
        raise InputError(f"label map has non-numeric voxel type {a.dtype}", path=path, code="non_integer_labels")
    lo = a.min() if a.size else 0
    hi = a.max() if a.size else 0
    if lo < 0:
        raise InputError(f"label map has negative values (minimum {lo:g}); labels must be 0 (background) or "
                         "positive integers", path=path, code="non_integer_labels")
    if a.dtype.kind == "f":
        target = np.uint8 if hi <= np.iinfo(np.uint8).max else np.uint16 if hi <= np.iinfo(np.uint16).max \
            else np.uint32
        if hi > np.iinfo(np.uint32).max:
            raise InputError(f"label value {hi:g} is too large", path=path, code="non_integer_labels")
        a = a.astype(target)
    return vol.with_array(a, is_label=True)
