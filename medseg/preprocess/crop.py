"""Crop a volume to its foreground and put (predicted) arrays back into the full grid.

The cropped Volume keeps its physical position: ``origin += direction @ (start * spacing)``, so
voxel ``[i, j, k]`` of the crop is voxel ``start + [i, j, k]`` of the input at the same RAS point.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medseg.errors import GeometryMismatchError
from medseg.volume import Volume

log = logging.getLogger("medseg.preprocess.crop")


@dataclass(frozen=True)
class CropBox:
    """Half-open voxel box ``[start, stop)`` per axis (z, y, x) inside a grid of ``full_shape``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def offset_mm(self, spacing_mm: Sequence[float], direction: np.ndarray) -> np.ndarray:
        """World vector (mm) from the full grid's first voxel to the box's: ``direction @ (start * spacing)``.
        The crop's origin is the full grid's plus this; uncropping subtracts it."""
        return direction @ (np.asarray(self.start, dtype=np.float64) * np.asarray(spacing_mm))

    def to_dict(self) -> dict[str, Any]:
        return {"start": list(self.start), "stop": list(self.stop), "full_shape": list(self.full_shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropBox:
        return cls(tuple(int(v) for v in d["start"]), tuple(int(v) for v in d["stop"]),  # type: ignore[arg-type]
                   tuple(int(v) for v in d["full_shape"]))  # type: ignore[arg-type]


def foreground_box(mask: np.ndarray, *, margin_vox: int | Sequence[int] = 0) -> CropBox:
    """Bounding box of the True voxels of ``mask`` (z, y, x) grown by ``margin_vox`` (clipped).

    An empty mask gives the full box.

    >>> m = np.zeros((4, 5, 6), bool); m[1, 2:4, 3] = True
    >>> foreground_box(m, margin_vox=1)
    CropBox(start=(0, 1, 2), stop=(3, 5, 5), full_shape=(4, 5, 6))
    """
    mask = np.asarray(mask, dtype=bool)
    full = tuple(int(n) for n in mask.shape)
    margin = np.broadcast_to(np.asarray(margin_vox, dtype=int), (3,))
    if np.any(margin < 0):
        raise ValueError(f"margin_vox must be >= 0, got {margin_vox}")
    start, stop = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.nonzero(mask.any(axis=other))[0]
        if hit.size == 0:
            return CropBox((0, 0, 0), full, full)  # type: ignore[arg-type]
        start.append(max(0, int(hit[0]) - int(margin[ax])))
        stop.append(min(full[ax], int(hit[-1]) + 1 + int(margin[ax])))
    return CropBox(tuple(start), tuple(stop), full)  # type: ignore[arg-type]


def crop_volume(vol: Volume, box: CropBox) -> Volume:
    """The part of ``vol`` inside ``box``, at the same physical place."""
    if tuple(box.full_shape) != vol.shape:
        raise GeometryMismatchError(f"crop box is for shape {box.full_shape}, volume has {vol.shape}",
                                    path=vol.meta.get("path"))
    origin = np.asarray(vol.origin_mm) + box.offset_mm(vol.spacing_mm, vol.direction)
    arr = np.ascontiguousarray(vol.array[box.slices])
    return replace(vol, array=arr, origin_mm=tuple(origin.tolist()), meta=dict(vol.meta))


def crop_to_foreground(
    vol: Volume,
    *,
    threshold: float | None = None,
    mask: np.ndarray | Volume | None = None,
    margin_vox: int | Sequence[int] = 0,
) -> tuple[Volume, CropBox]:
    """Crop ``vol`` to the box around its foreground.

    Foreground is ``mask`` if given (array or Volume on the same grid), else ``vol > threshold``,
    else (default) ``vol != 0`` (nnU-Net's crop to non-zero). An all-background volume is
    returned whole (and a warning logged).

    Returns
    -------
    (cropped Volume, CropBox) -- keep the box to :func:`uncrop` predictions later.
    """
    if mask is not None:
        if isinstance(mask, Volume):
            why = mask.grid_mismatch(vol)
            if why:
                raise GeometryMismatchError(f"crop mask is on another grid: {why}", path=mask.meta.get("path"))
            mask = mask.array
        m = np.asarray(mask)
        if m.shape != vol.shape:
            raise GeometryMismatchError(f"crop mask shape {m.shape} differs from volume {vol.shape}",
                                        path=vol.meta.get("path"))
        fg = m != 0
    elif threshold is not None:
        fg = vol.array > threshold
    else:
        fg = vol.array != 0
    box = foreground_box(fg, margin_vox=margin_vox)
    if not fg.any():
        log.warning("%s: no foreground voxels; not cropped", vol.meta.get("path", "volume"))
    return crop_volume(vol, box), box


def uncrop(
    data: np.ndarray | Volume,
    box: CropBox,
    reference: Volume | None = None,
    *,
    fill: float = 0,
) -> np.ndarray | Volume:
    """Put a cropped array/Volume back into the full grid (``box.full_shape``), ``fill`` elsewhere.

    An array gives an array; a Volume gives a Volume on the grid of ``reference`` if given,
    else on the grid implied by the box (origin moved back by ``start``).

    >>> box = CropBox((1, 0, 2), (2, 2, 3), (3, 2, 4))
    >>> uncrop(np.ones((1, 2, 1), np.uint8), box)[:, :, 2].tolist()
    [[0, 0], [1, 1], [0, 0]]
    """
    arr = data.array if isinstance(data, Volume) else np.asarray(data)
    if tuple(arr.shape) != tuple(box.shape):
        raise GeometryMismatchError(f"uncrop: array shape {tuple(arr.shape)} differs from the crop box {box.shape}")
    full = np.full(box.full_shape, fill, dtype=arr.dtype)
    full[box.slices] = arr
    if not isinstance(data, Volume):
        return full
    if reference is not None:
        if reference.shape != tuple(box.full_shape):
            raise GeometryMismatchError(f"uncrop: reference shape {reference.shape} differs from the box's "
                                        f"full shape {tuple(box.full_shape)}", path=reference.meta.get("path"))
        return replace(reference, array=full, is_label=data.is_label, meta=dict(data.meta))
    origin = np.asarray(data.origin_mm) - box.offset_mm(data.spacing_mm, data.direction)
    return replace(data, array=full, origin_mm=tuple(origin.tolist()), meta=dict(data.meta))
