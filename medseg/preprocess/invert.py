"""Back from the preprocessed grid to the input grid: class probabilities (slab by slab, optionally
straight into their argmax) and label maps, the crop undone. The inverse of
:func:`medseg.preprocess.plan.apply_plan_arrays`, whose :class:`~medseg.preprocess.plan.Prepared`
record says which grid each step used."""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.errors import GeometryMismatchError
from medseg.preprocess.grid import Grid
from medseg.preprocess.plan import Prepared
from medseg.preprocess.resample import resample_array_to_grid
from medseg.volume import Volume

#: about this many bytes of class probabilities are resampled at a time on the way back to the input grid
INVERT_SLAB_BYTES = 32 * 2 ** 20


def to_input_grid(probs: np.ndarray, prepared: Prepared, target: Grid, *, threads: int | None = None) -> np.ndarray:
    """Class probabilities (K, z', y', x') on the model grid -> (K, z, y, x) float32 on ``target``.

    Linear resampling in physical space per class, then the crop undone (background 1, other
    classes 0 outside the box). Identity when no resampling or crop happened. The probabilities
    of :func:`invert_probabilities` (which can give their argmax without them).
    """
    full, _ = invert_probabilities(probs, prepared, target, threads=threads)
    if full is None:      # keep_probabilities=True always returns them
        raise RuntimeError("no probabilities from the inversion")
    return full


def invert_probabilities(probs: np.ndarray, prepared: Prepared, target: Grid, *, keep_probabilities: bool = True,
                         label_dtype: Any = None, threads: int | None = None,
                         slab_bytes: int = INVERT_SLAB_BYTES) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Class probabilities (K, z', y', x') on the model grid (float32, or float16) back on ``target``, and/or
    their argmax there.

    Returns ``(probabilities, labels)``: (K, z, y, x) float32 on ``target`` (linear resampling in
    physical space per class, background 1 and other classes 0 outside the crop box), or None
    without ``keep_probabilities``; and ``argmax`` over the classes of exactly those values as
    ``label_dtype`` (None: not computed). The work goes slab by slab along the first axis, about
    ``slab_bytes`` of probabilities at a time (:func:`medseg.preprocess.resample.resample_array_to_grid`
    ``rows=``, bitwise the values of resampling whole maps), straight into the preallocated
    outputs: for labels alone, memory beyond ``probs`` is the label map plus a slab, not K float32
    maps of the input grid and an int64 argmax of it.
    """
    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(prepared.grid.shape):
        raise ValueError(f"probabilities {probs.shape} are not (K, *{prepared.grid.shape})")
    probs = np.asarray(probs)
    if probs.dtype != np.float16:    # float16 (a large case, medseg.inference.stream) is converted slab by slab
        probs = probs.astype(np.float32, copy=False)
    n_cls = probs.shape[0]
    box = prepared.crop if prepared.crop is not None and tuple(prepared.crop.shape) != tuple(target.shape) else None
    resample = not same_grid(prepared.grid, prepared.cropped)
    labels = None if label_dtype is None else np.zeros(target.shape, dtype=label_dtype)  # background outside the box
    full: np.ndarray | None = None
    if keep_probabilities:
        if not resample and box is None:
            full = probs.astype(np.float32, copy=False)
        else:
            full = np.zeros((n_cls, *target.shape), dtype=np.float32)
            full[0] = 1.0
    if labels is None and (full is None or full is probs):
        return full, labels
    shape = prepared.cropped.shape
    step = max(4, int(slab_bytes) // max(1, n_cls * int(np.prod(shape[1:])) * 4))
    start = box.start if box is not None else (0, 0, 0)
    for r0 in range(0, shape[0], step):
        rows = slice(r0, min(r0 + step, shape[0]))
        if resample:
            slab = np.empty((n_cls, rows.stop - r0, *shape[1:]), dtype=np.float32)
            for k in range(n_cls):
                slab[k] = resample_array_to_grid(probs[k], prepared.grid, prepared.cropped, order="linear",
                                                 fill=1.0 if k == 0 else 0.0, threads=threads, rows=rows)
        else:
            slab = probs[:, rows]
        where = (slice(start[0] + r0, start[0] + rows.stop),
                 *(slice(start[i], start[i] + shape[i]) for i in (1, 2)))
        if full is not None and full is not probs:
            full[(slice(None), *where)] = slab
        if labels is not None:
            labels[where] = np.argmax(slab, axis=0)
        del slab
    return full, labels


def labels_to_input_grid(labels: np.ndarray, prepared: Prepared, target: Grid, *, label_order: str = "linear",
                         threads: int | None = None) -> np.ndarray:
    """A label map on the model grid -> the input grid (per-label ``linear`` or ``nearest``, crop undone with 0)."""
    if tuple(labels.shape) != tuple(prepared.grid.shape):
        raise GeometryMismatchError(f"prediction shape {tuple(labels.shape)} is not the preprocessed shape "
                                    f"{prepared.grid.shape}")
    on_crop = labels if same_grid(prepared.grid, prepared.cropped) else resample_array_to_grid(
        labels, prepared.grid, prepared.cropped, is_label=True, label_order=label_order, threads=threads)
    if prepared.crop is None or tuple(prepared.crop.shape) == tuple(target.shape):
        return np.ascontiguousarray(on_crop)
    full = np.zeros(target.shape, dtype=labels.dtype)
    full[prepared.crop.slices] = on_crop
    return full


def invert_plan(pred: Volume, info: dict[str, Any], *, label_order: str = "nearest") -> Volume:
    """Put a label map predicted on the preprocessed grid back on the original input grid.

    Resamples onto the cropped grid (exact in physical space), then pads with background to the
    full input grid. ``pred`` must be on ``info["preprocessed_grid"]``.
    """
    original = Grid.from_dict(info["original_grid"])
    try:
        full = labels_to_input_grid(pred.array, Prepared.from_info(info), original, label_order=label_order)
    except GeometryMismatchError as exc:
        raise GeometryMismatchError(str(exc), path=pred.meta.get("path")) from None
    return Volume(full, original.spacing_mm, original.origin_mm, original.direction, is_label=True,
                  meta=dict(pred.meta))


def same_grid(a: Grid, b: Grid, tol_mm: float = 1e-6) -> bool:
    """Same shape and, within ``tol_mm``, the same spacing, origin and direction."""
    return tuple(a.shape) == tuple(b.shape) and bool(
        np.allclose(a.spacing_mm, b.spacing_mm, atol=tol_mm, rtol=0)
        and np.allclose(a.origin_mm, b.origin_mm, atol=tol_mm, rtol=0)
        and np.allclose(a.direction, b.direction, atol=tol_mm, rtol=0))
