"""A bundle's preprocessing at inference, and its inverse: from the input grid to the model's and back.

The bundle's ``plan`` is a preprocessing plan of :mod:`medseg.preprocess.plan` (the one format,
older forms read too), applied with the very function training used
(:func:`medseg.preprocess.plan.apply_plan_arrays`: for a trained model, cubic B-spline resampling
when an axis is more than 1 % off the plan spacing, then the plan's normalisation), so inference
sees exactly what the network was trained on; a plan that crops to non-zero remembers the box so
it can be undone.

Inversion (:func:`to_input_grid`) maps the network's class probabilities back onto the input grid:
each class map is resampled **linearly** in physical space (the preprocessed grid keeps the input's
field of view, origin and direction, :func:`medseg.preprocess.grid.spacing_grid`), the crop is
undone with background probability 1 outside the box, and only then the argmax is taken. This is
nnU-Net's order and is more accurate than resampling the argmax label map with nearest neighbour,
which moves boundaries by up to half a model voxel and makes staircases (see docs/predict.md).
When the probability maps on the input grid would exceed ``max_bytes`` the argmax is taken on the
model grid and the label map is resampled per label linearly instead (:func:`labels_to_input_grid`;
same boundaries to within a fraction of a voxel, a fraction of the memory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.preprocess.grid import Grid
from medseg.preprocess.invert import invert_probabilities, labels_to_input_grid, to_input_grid
from medseg.preprocess.plan import Prepared, apply_plan_arrays, plan_spacing
from medseg.volume import Volume

__all__ = ["FAR_SPACING_FACTOR", "Prepared", "invert_probabilities", "labels_to_input_grid", "plan_spacing",
           "preprocess", "spacing_warning", "stack_channels", "to_input_grid"]

log = logging.getLogger("medseg.inference")

#: spacing differing from the plan's by more than this factor on an axis draws a warning
FAR_SPACING_FACTOR = 1.5


def spacing_warning(spacing_mm: Sequence[float], plan: dict[str, Any], *,
                    factor: float = FAR_SPACING_FACTOR) -> str | None:
    """A message when an axis of ``spacing_mm`` is more than ``factor`` times finer or coarser than the plan's.

    >>> spacing_warning((1.0, 1.0, 1.0), {"spacing_mm": [1, 1, 1]}) is None
    True
    >>> spacing_warning((3.0, 1.0, 1.0), {"spacing_mm": [1, 1, 1]})[:32]
    'spacing (3, 1, 1) mm is far from'
    """
    target = plan_spacing(plan)
    if target is None:
        return None
    ratio = np.asarray(spacing_mm, dtype=np.float64) / np.asarray(target, dtype=np.float64)
    if np.all(ratio <= factor) and np.all(ratio >= 1.0 / factor):
        return None
    fmt = ", ".join(f"{s:.4g}" for s in spacing_mm)
    tfmt = ", ".join(f"{s:.4g}" for s in target)
    return (f"spacing ({fmt}) mm is far from the model's training spacing ({tfmt}) mm; the image is resampled "
            "to the training spacing, but accuracy may suffer on data this different from the training data")


#: dtypes whose every value float32 holds exactly: preprocessing may take them as they are
EXACT_IN_FLOAT32 = (np.float32, np.int8, np.uint8, np.int16, np.uint16, np.bool_)


def stack_channels(channels: Sequence[Volume], *, expected: int, path: Any = None,
                   copy: bool = True) -> tuple[np.ndarray, Volume]:
    """(C, z, y, x) float32 array of the channel volumes (all on one grid) and the first volume.

    ``copy=False``: a single channel stored in a type float32 holds exactly (:data:`EXACT_IN_FLOAT32`,
    e.g. a CT's int16) comes back as a view ``(1, z, y, x)`` of its own array instead of a float32 copy
    (:func:`preprocess` converts while it resamples, to the same values; a 512 x 512 x 300 CT saves 300 MiB).
    Raises InputError (code ``channels``) when the count differs from ``expected`` or the grids differ.
    """
    if len(channels) != expected:
        raise InputError(f"the model expects {expected} input channel(s) (files CASE_0000 .. CASE_{expected - 1:04d}), "
                         f"this case has {len(channels)}", path=path, code="channels")
    ref = channels[0]
    for k, ch in enumerate(channels[1:], start=1):
        why = ch.grid_mismatch(ref, tol_mm=1e-3)
        if why:
            raise InputError(f"channel {k} is not on the grid of channel 0 ({why})", path=ch.meta.get("path") or path,
                             code="geometry_mismatch")
    if not copy and len(channels) == 1 and np.asarray(ref.array).dtype.type in EXACT_IN_FLOAT32:
        return np.asarray(ref.array)[None], ref
    arr = np.stack([np.asarray(ch.array, dtype=np.float32) for ch in channels])
    return arr, ref


def preprocess(image: np.ndarray, grid: Grid, plan: dict[str, Any], *, threads: int | None = None) -> Prepared:
    """Apply the bundle's ``plan`` to an image (C, z, y, x) on ``grid`` (see the module doc)."""
    return apply_plan_arrays(image, plan, grid=grid, threads=threads)
