"""A bundle's preprocessing at inference, and its inverse: from the input grid to the model's and back.

Two plan formats are understood:

* the training plan written by ``medseg train`` (:mod:`medseg.training.plan`)::

      {spacing_mm: [z, y, x], normalization: zscore | zscore_nonzero | none, patch_size, divisor}

  applied with the very function training used (:func:`medseg.training.plan.apply_plan`: cubic
  B-spline resampling with :func:`medseg.preprocess.resample_to_spacing` when an axis is more than
  1 % off the plan spacing, then per-case z-score), so inference sees exactly what the network was
  trained on;
* a preprocessing plan of :mod:`medseg.preprocess.plan` (``target_spacing_mm``, ``crop``,
  ``normalization: {scheme: ...}``, ``resample``): crop to non-zero, normalise, resample, with
  the crop box remembered so it can be undone.

Inversion (:func:`to_input_grid`) maps the network's class probabilities back onto the input grid:
each class map is resampled **linearly** in physical space (the preprocessed grid keeps the input's
field of view, origin and direction, :func:`medseg.preprocess.grid.spacing_grid`), the crop is
undone with background probability 1 outside the box, and only then the argmax is taken. This is
nnU-Net's order and is more accurate than resampling the argmax label map with nearest neighbour,
which moves boundaries by up to half a model voxel and makes staircases (see docs/predict.md).
When the probability maps on the input grid would exceed ``max_bytes`` the argmax is taken on the
model grid and the label map is resampled per label linearly instead (same boundaries to within
a fraction of a voxel, a fraction of the memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medseg.errors import InputError
from medseg.preprocess.crop import CropBox
from medseg.preprocess.grid import Grid, grid_of, spacing_grid
from medseg.volume import Volume

log = logging.getLogger("medseg.inference")

#: spacing differing from the plan's by more than this factor on an axis draws a warning
FAR_SPACING_FACTOR = 1.5
#: the training rule: axes within 1 % of the plan spacing are not resampled
SAME_SPACING_RTOL = 0.01


@dataclass
class Prepared:
    """A case on the model's grid.

    ``image``: (C, z', y', x') float32, normalised. ``grid``: the grid of ``image``. ``crop``:
    the box of the input cut out before resampling (None: the whole input). ``cropped``: the
    grid of that box on the input grid (the input grid itself without a crop).
    """

    image: np.ndarray
    grid: Grid
    crop: CropBox | None
    cropped: Grid


def plan_spacing(plan: dict[str, Any]) -> tuple[float, float, float] | None:
    """The spacing (z, y, x) mm a plan resamples to, or None when it keeps the input spacing."""
    sp = plan.get("spacing_mm", plan.get("target_spacing_mm"))
    return None if sp is None else tuple(float(s) for s in sp)  # type: ignore[return-value]


def is_training_plan(plan: dict[str, Any]) -> bool:
    return "target_spacing_mm" not in plan and not isinstance(plan.get("normalization"), dict)


def spacing_warning(spacing_mm: Sequence[float], plan: dict[str, Any], *,
                    factor: float = FAR_SPACING_FACTOR) -> str | None:
    """A message when an axis of ``spacing_mm`` is more than ``factor`` times finer or coarser than the plan's.

    >>> spacing_warning((1.0, 1.0, 1.0), {"spacing_mm": [1, 1, 1]}) is None
    True
    >>> spacing_warning((3.0, 1.0, 1.0), {"spacing_mm": [1, 1, 1]})[:33]
    'spacing (3, 1, 1) mm is far from t'
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


def stack_channels(channels: Sequence[Volume], *, expected: int, path: Any = None) -> tuple[np.ndarray, Volume]:
    """(C, z, y, x) float32 array of the channel volumes (all on one grid) and the first volume.

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
    arr = np.stack([np.asarray(ch.array, dtype=np.float32) for ch in channels])
    return arr, ref


def preprocess(image: np.ndarray, grid: Grid, plan: dict[str, Any]) -> Prepared:
    """Apply ``plan`` to an image (C, z, y, x) on ``grid``; see the module doc for the two formats."""
    if is_training_plan(plan):
        from medseg.training.plan import apply_plan as train_apply_plan

        target = plan_spacing(plan)
        img, _ = train_apply_plan(image, None, grid.spacing_mm, plan)
        if target is None or np.all(np.abs(np.asarray(grid.spacing_mm) / np.asarray(target) - 1) < SAME_SPACING_RTOL):
            pre = grid  # training keeps such cases on their own grid
        else:
            pre = spacing_grid(grid, target)
        if tuple(img.shape[1:]) != tuple(pre.shape):  # the two rules of grid sizes must agree
            raise InputError(f"internal: preprocessed shape {img.shape[1:]} differs from the planned grid {pre.shape}",
                             code="internal")
        return Prepared(np.ascontiguousarray(img, dtype=np.float32), pre, None, grid)
    from medseg.preprocess.plan import apply_plan as pre_apply_plan

    if image.shape[0] != 1:
        raise InputError("preprocessing plans with crop/normalisation schemes support single-channel models only",
                         code="channels")
    vol = Volume(image[0], grid.spacing_mm, grid.origin_mm, grid.direction)
    res = pre_apply_plan(vol, plan)
    return Prepared(np.ascontiguousarray(res.image.array[None], dtype=np.float32), grid_of(res.image),
                    CropBox.from_dict(res.info["crop_box"]), Grid.from_dict(res.info["cropped_grid"]))


def to_input_grid(probs: np.ndarray, prepared: Prepared, target: Grid, *, threads: int | None = None) -> np.ndarray:
    """Class probabilities (K, z', y', x') on the model grid -> (K, z, y, x) float32 on ``target``.

    Linear resampling in physical space per class, then the crop undone (background 1, other
    classes 0 outside the box). Identity when no resampling or crop happened.
    """
    from medseg.preprocess.resample import resample_to_grid

    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(prepared.grid.shape):
        raise ValueError(f"probabilities {probs.shape} are not (K, *{prepared.grid.shape})")
    same = prepared.grid.shape == prepared.cropped.shape and _same_grid(prepared.grid, prepared.cropped)
    if same:
        on_crop = np.asarray(probs, dtype=np.float32)
    else:
        g = prepared.grid
        on_crop = np.empty((probs.shape[0], *prepared.cropped.shape), dtype=np.float32)
        for k in range(probs.shape[0]):
            v = Volume(np.asarray(probs[k], dtype=np.float32), g.spacing_mm, g.origin_mm, g.direction)
            on_crop[k] = resample_to_grid(v, prepared.cropped, order="linear", fill=1.0 if k == 0 else 0.0,
                                          threads=threads).array
    if prepared.crop is None or tuple(prepared.crop.shape) == tuple(target.shape):
        return on_crop
    full = np.zeros((probs.shape[0], *target.shape), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None), *prepared.crop.slices)] = on_crop
    return full


def labels_to_input_grid(labels: np.ndarray, prepared: Prepared, target: Grid, *, threads: int | None = None) -> np.ndarray:
    """A label map on the model grid -> the input grid (per-label linear resampling, crop undone with 0)."""
    from medseg.preprocess.resample import resample_to_grid

    g = prepared.grid
    v = Volume(labels, g.spacing_mm, g.origin_mm, g.direction, is_label=True)
    on_crop = v.array if _same_grid(g, prepared.cropped) else resample_to_grid(
        v, prepared.cropped, label_order="linear", threads=threads).array
    if prepared.crop is None or tuple(prepared.crop.shape) == tuple(target.shape):
        return np.ascontiguousarray(on_crop)
    full = np.zeros(target.shape, dtype=labels.dtype)
    full[prepared.crop.slices] = on_crop
    return full


def _same_grid(a: Grid, b: Grid, tol_mm: float = 1e-6) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool(
        np.allclose(a.spacing_mm, b.spacing_mm, atol=tol_mm, rtol=0)
        and np.allclose(a.origin_mm, b.origin_mm, atol=tol_mm, rtol=0)
        and np.allclose(a.direction, b.direction, atol=tol_mm, rtol=0))
