"""Resampling of arrays and Volumes to a target spacing (or shape) or onto another grid.

Two array-level entry points do the work, for callers that hold plain arrays:
:func:`resample_array` (an array with its spacing -> another spacing or shape, field of view
preserved) and :func:`resample_array_to_grid` (an array on one :class:`~medseg.preprocess.grid.Grid`
-> another grid, through physical space). :func:`resample_to_spacing` and :func:`resample_to_grid`
are their Volume forms (same voxels, plus the new geometry).

The grid convention (field of view preserved, voxel centres at ``(j + 0.5) * s_new / s - 0.5``)
is documented in :mod:`medseg.preprocess.grid`. Images are interpolated ``"linear"`` (default),
``"cubic"`` (B-spline with exact prefilter, same kernel as SimpleITK's ``sitkBSpline`` and
``scipy.ndimage`` ``order=3``) or ``"nearest"``, and come out float32 (nearest keeps the dtype).
A label map (a Volume with ``is_label``, an array with ``is_label=True``) picks its own method,
``label_order``:

* ``"nearest"`` (default): nearest voxel, dtype kept.
* ``"linear"``: per-label linear, as nnU-Net: each label's one-hot map is interpolated linearly
  and the label with the largest value wins (background wins ties). Each label is processed only
  inside its bounding box, so 100+ labels stay cheap.

Anisotropic data (nnU-Net's rule): when ``max(spacing) / min(spacing) > anisotropy_threshold``
for the input spacing (else for the target spacing), the low-resolution axis is interpolated
with ``anisotropic_order`` (default ``"nearest"``, nnU-Net's ``order_z=0``) and the in-plane axes
with the chosen order. Every axis is always interpolated on its own (separably), so this only
changes the out-of-plane kernel. No anti-aliasing is applied when downsampling (as SimpleITK and
nnU-Net); smooth first (``denoise.gaussian``) if that matters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from medseg.preprocess.grid import Grid, grid_of, index_grid, index_map, separable_map, shape_grid, spacing_grid
from medseg.preprocess.interp import KERNELS, Taps, apply_taps, is_identity, make_taps, prefilter_bspline, spline_taps
from medseg.volume import Volume

log = logging.getLogger("medseg.preprocess.resample")

LABEL_ORDERS = ("nearest", "linear")


def _check_order(order: str, allowed: Sequence[str], what: str) -> None:
    if order not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got '{order}'")


def anisotropic_axis(spacing_mm: Sequence[float], threshold: float) -> int | None:
    """The low-resolution axis if ``max/min spacing > threshold``, else None."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    if sp.max() / sp.min() > threshold:
        return int(np.argmax(sp))
    return None


def resample_array(
    a: np.ndarray,
    spacing_mm: Sequence[float],
    target_mm: Sequence[float] | None = None,
    *,
    shape: Sequence[int] | None = None,
    is_label: bool = False,
    order: str = "linear",
    label_order: str = "nearest",
    anisotropy_threshold: float = 3.0,
    anisotropic_order: str = "nearest",
    fill: float = 0.0,
    threads: int | None = None,
) -> np.ndarray:
    """Resample an array with voxel spacing ``spacing_mm`` to ``target_mm`` (or to ``shape``).

    The array-level entry point: no Volume is needed, only the spacing. The field of view is
    preserved (:func:`medseg.preprocess.grid.spacing_grid` / :func:`~medseg.preprocess.grid.shape_grid`):
    the output shape is ``round(n * spacing / target)`` (or ``shape``) and output voxel ``j`` samples
    input index ``(j + 0.5) * n / n_new - 0.5``. Origin and direction play no part (the same grid
    in every orientation), so :func:`resample_to_spacing` of a Volume gives the same voxels.

    Parameters
    ----------
    a : (z, y, x) array, or (C, z, y, x) to resample each channel alike.
    spacing_mm : (z, y, x) spacing of ``a``.
    target_mm : (z, y, x) spacing to resample to; or give ``shape`` (z, y, x) instead.
    is_label : interpolate with ``label_order`` ("nearest" or per-label "linear") instead of ``order``.
    order, label_order, anisotropy_threshold, anisotropic_order, fill, threads : as :func:`resample_to_spacing`.

    Returns
    -------
    The resampled array: float32 for images with linear/cubic, else the input dtype.

    Example
    -------
    >>> a = np.array([0.0, 10.0], np.float32).reshape(1, 1, 2)
    >>> resample_array(a, (1, 1, 2), (1, 1, 1)).ravel().tolist()
    [0.0, 2.5, 7.5, 10.0]
    >>> resample_array(a, (1, 1, 2), shape=(1, 1, 4), order="nearest").ravel().tolist()
    [0.0, 0.0, 10.0, 10.0]
    """
    a = np.asarray(a)
    kw = dict(target_mm=target_mm, shape=shape, is_label=is_label, order=order, label_order=label_order,
              anisotropy_threshold=anisotropy_threshold, anisotropic_order=anisotropic_order, fill=fill,
              threads=threads)
    if a.ndim == 4:
        if a.shape[0] == 1:   # no stacked copy of one channel
            return resample_array(a[0], spacing_mm, **kw)[None]
        return np.stack([resample_array(ch, spacing_mm, **kw) for ch in a])
    if a.ndim != 3:
        raise ValueError(f"resample_array needs a (z, y, x) or (C, z, y, x) array, got shape {a.shape}")
    if (target_mm is None) == (shape is None):
        raise ValueError("give either a target spacing or a target shape")
    src = index_grid(a.shape, spacing_mm)
    dst = spacing_grid(src, target_mm) if shape is None else shape_grid(src, shape)
    aniso = anisotropic_axis(src.spacing_mm, anisotropy_threshold)
    if aniso is None:
        aniso = anisotropic_axis(dst.spacing_mm, anisotropy_threshold)
    return _resample(a, src, dst, is_label=is_label, order=order, label_order=label_order, aniso_axis=aniso,
                     anisotropic_order=anisotropic_order, fill=fill, threads=threads)


def resample_array_to_grid(
    a: np.ndarray,
    src: Grid,
    dst: Grid,
    *,
    is_label: bool = False,
    order: str = "linear",
    label_order: str = "nearest",
    fill: float = 0.0,
    threads: int | None = None,
    rows: slice | None = None,
) -> np.ndarray:
    """Resample an array lying on grid ``src`` onto grid ``dst`` (physical space); see :func:`resample_to_grid`.

    ``rows``: only these rows (a ``slice`` with step 1) along the first axis of ``dst``, computed
    from just the part of ``a`` they need: the very values of the same rows of the whole result,
    for a fraction of the memory (images on grids with parallel axes; else the whole result is
    computed and cut).

    >>> g = Grid((1, 1, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    >>> h = Grid((1, 1, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.5), np.eye(3))   # half a voxel along x
    >>> resample_array_to_grid(np.array([0.0, 10.0], np.float32).reshape(1, 1, 2), g, h).ravel().tolist()
    [5.0, 10.0]
    """
    a = np.asarray(a)
    if tuple(a.shape) != tuple(src.shape):
        raise ValueError(f"array shape {a.shape} is not the shape of its grid {src.shape}")
    if rows is not None:
        start, stop, step = rows.indices(dst.shape[0])
        if step != 1 or stop <= start:
            raise ValueError(f"rows {rows} must be a non-empty slice with step 1 within {dst.shape[0]} rows")
        rows = slice(start, stop)
    return _resample(a, src, dst, is_label=is_label, order=order, label_order=label_order, aniso_axis=None,
                     anisotropic_order="linear", fill=fill, threads=threads, rows=rows)


def resample_to_spacing(
    vol: Volume,
    spacing_mm: Sequence[float],
    *,
    order: str = "linear",
    label_order: str = "nearest",
    anisotropy_threshold: float = 3.0,
    anisotropic_order: str = "nearest",
    fill: float = 0.0,
    threads: int | None = None,
) -> Volume:
    """Resample ``vol`` to ``spacing_mm`` (z, y, x), field of view preserved.

    The Volume form of :func:`resample_array` (same voxels), with the geometry of the new grid.

    Parameters
    ----------
    vol : Volume
        Image or label (``vol.is_label`` picks ``label_order``).
    spacing_mm : three floats
        Target spacing (z, y, x). The output shape is ``round(n * old / new)`` and the stored
        spacing the exact one that fits the field of view (see :mod:`medseg.preprocess.grid`).
    order : {"linear", "cubic", "nearest"}
        Image interpolation.
    label_order : {"nearest", "linear"}
        Label interpolation ("linear" = per-label linear + argmax).
    anisotropy_threshold, anisotropic_order
        Out-of-plane handling of strongly anisotropic data (see module doc).

    Returns
    -------
    Volume on the new grid: float32 for images with linear/cubic, else the input dtype.

    Example
    -------
    >>> v = Volume(np.arange(8, dtype=np.float32).reshape(2, 2, 2), spacing_mm=(2.0, 2.0, 2.0))
    >>> resample_to_spacing(v, (1.0, 1.0, 1.0)).shape
    (4, 4, 4)
    """
    dst = spacing_grid(grid_of(vol), spacing_mm)
    arr = resample_array(vol.array, vol.spacing_mm, spacing_mm, is_label=vol.is_label, order=order,
                         label_order=label_order, anisotropy_threshold=anisotropy_threshold,
                         anisotropic_order=anisotropic_order, fill=fill, threads=threads)
    return _on_grid(vol, arr, dst)


def resample_to_grid(
    vol: Volume,
    reference: Volume | Grid,
    *,
    order: str = "linear",
    label_order: str = "nearest",
    fill: float = 0.0,
    threads: int | None = None,
) -> Volume:
    """Resample ``vol`` onto the grid of ``reference`` (a Volume or :class:`Grid`).

    Every output voxel centre is mapped through physical (RAS) space into ``vol``'s voxel
    indices. When the two grids' axes are parallel (any permutation or flip) the work is
    separable and fast; oblique grids fall back to ``scipy.ndimage.map_coordinates`` with the same
    kernels. Output voxels more than half a voxel outside ``vol`` get ``fill`` (labels: 0).
    The Volume form of :func:`resample_array_to_grid`.

    Example
    -------
    >>> v = Volume(np.arange(64, dtype=np.float32).reshape(4, 4, 4))
    >>> w = resample_to_spacing(v, (0.5, 0.5, 0.5))     # linear values away from the edges
    >>> back = resample_to_grid(w, v)                   # ... so the round trip is exact there
    >>> bool(np.allclose(back.array[1:-1, 1:-1, 1:-1], v.array[1:-1, 1:-1, 1:-1]))
    True
    """
    dst = grid_of(reference)
    arr = resample_array_to_grid(vol.array, grid_of(vol), dst, is_label=vol.is_label, order=order,
                                 label_order=label_order, fill=fill, threads=threads)
    return _on_grid(vol, arr, dst)


def _on_grid(vol: Volume, arr: np.ndarray, grid: Grid) -> Volume:
    return replace(vol, array=arr, spacing_mm=grid.spacing_mm, origin_mm=grid.origin_mm, direction=grid.direction,
                   meta=dict(vol.meta))


def _resample(a: np.ndarray, src: Grid, dst: Grid, *, is_label: bool, order: str, label_order: str,
              aniso_axis: int | None, anisotropic_order: str, fill: float, threads: int | None,
              rows: slice | None = None) -> np.ndarray:
    _check_order(order, KERNELS, "order")
    _check_order(label_order, LABEL_ORDERS, "label_order")
    _check_order(anisotropic_order, ("nearest", "linear"), "anisotropic_order")
    m = index_map(src, dst)
    sep = separable_map(m)
    base = label_order if is_label else order
    kernels = [base] * 3
    if aniso_axis is not None and base != "nearest":
        kernels[aniso_axis] = anisotropic_order
        log.debug("anisotropic spacing %s: axis %d resampled with %s", src.spacing_mm, aniso_axis, anisotropic_order)
    if is_label:
        fill = 0  # outside a label map is background
    if is_label and label_order == "linear":
        out = _per_label_linear(a, m, sep, dst.shape, kernels, threads)
    elif sep is None:
        out = _oblique(a, m, dst.shape, base, fill, is_label=is_label)
    else:
        return _separable(a, sep, dst.shape, kernels, fill, threads, rows=rows)
    return out if rows is None else np.ascontiguousarray(out[rows])


def _axis_taps(sep, dst_shape, src_shape, kernels) -> list[Taps]:
    perm, scale, offset = sep
    return [make_taps(scale[k] * np.arange(dst_shape[perm[k]]) + offset[k], src_shape[k], kernels[k])
            for k in range(3)]


def _separable(a: np.ndarray, sep, dst_shape, kernels, fill: float, threads: int | None,
               taps: list[Taps] | None = None, rows: slice | None = None) -> np.ndarray:
    perm = sep[0]
    taps = list(taps if taps is not None else _axis_taps(sep, dst_shape, a.shape, kernels))
    cubic_axes = tuple(k for k in range(3) if kernels[k] == "cubic" and not is_identity(taps[k], a.shape[k]))
    if cubic_axes and rows is not None:
        # the B-spline filter of an axis needs the whole of it: the rows of the whole result (bitwise theirs)
        return np.ascontiguousarray(_separable(a, sep, dst_shape, kernels, fill, threads, taps=taps)[rows])
    # cheapest order: shrink first, grow last (each pass costs about its output size)
    ratio = [taps[k].index.shape[1] / a.shape[k] for k in range(3)]
    order = sorted(range(3), key=lambda k: ratio[k])
    skip = [is_identity(taps[k], a.shape[k]) for k in range(3)]
    if rows is not None:   # only output rows ``rows`` of dst axis 0: same passes, in the same order, on less data
        a, taps[perm.index(0)] = _restrict(a, perm.index(0), taps[perm.index(0)], rows)
    if not cubic_axes and any(k != "nearest" for k in kernels) and a.dtype != np.float32:
        a = a.astype(np.float32)   # after the cut: rows of a float16 map convert only what they read
    for k in order:        # a cubic axis is filtered just before its pass, slab by slab (spline_taps)
        if k in cubic_axes:
            a = spline_taps(a, k, taps[k], threads=threads)
        elif not skip[k]:
            a = apply_taps(a, k, taps[k], threads=threads)
    for k in range(3):  # after all passes, so later passes cannot blend the fill value
        if taps[k].outside.any():
            sel: list = [slice(None)] * 3
            sel[k] = taps[k].outside
            a[tuple(sel)] = fill
    axes = list(np.argsort(perm))  # output axis m comes from source axis k with perm[k] == m
    return np.ascontiguousarray(a.transpose(axes)) if axes != [0, 1, 2] else a


def _restrict(a: np.ndarray, axis: int, taps: Taps, rows: slice) -> tuple[np.ndarray, Taps]:
    """The part of ``a`` along ``axis`` that output positions ``rows`` of ``taps`` read, and their taps on it.

    Every output value is computed from the same input values with the same weights as before, so
    it is bitwise the one of the whole pass."""
    sel: list = [slice(None)] * a.ndim
    if taps.identity:   # skipped pass: the rows are the input rows themselves
        sel[axis] = rows
        n = rows.stop - rows.start
        return a[tuple(sel)], Taps(np.arange(n, dtype=np.intp)[None, :], None, taps.outside[rows], identity=True)
    idx = taps.index[:, rows]
    s0, s1 = int(idx.min()), int(idx.max()) + 1
    sel[axis] = slice(s0, s1)
    return a[tuple(sel)], Taps(idx - s0, None if taps.weight is None else taps.weight[:, rows], taps.outside[rows])


def _oblique(a: np.ndarray, m: np.ndarray, dst_shape, kernel: str, fill: float, *, is_label: bool) -> np.ndarray:
    """General (rotated) grids: scipy map_coordinates, slab by slab to bound memory."""
    from scipy.ndimage import map_coordinates

    order = {"nearest": 0, "linear": 1, "cubic": 3}[kernel]
    src = a if order == 0 else np.asarray(a, dtype=np.float32)
    if order == 3:
        src = prefilter_bspline(src, (0, 1, 2))
    out = np.empty(dst_shape, dtype=a.dtype if order == 0 else np.float32)
    n = np.asarray(a.shape, dtype=np.float64)
    yy, xx = np.meshgrid(np.arange(dst_shape[1]), np.arange(dst_shape[2]), indexing="ij")
    for z in range(dst_shape[0]):
        idx = np.stack([np.full_like(yy, z), yy, xx]).reshape(3, -1).astype(np.float64)
        pos = m[:3, :3] @ idx + m[:3, 3:4]
        outside = np.any((pos < -0.5 - 1e-6) | (pos > n[:, None] - 0.5 + 1e-6), axis=0)
        if order == 0:
            pos = np.floor(pos + 0.5)
        mode = "mirror" if order == 3 else "nearest"
        vals = map_coordinates(src, pos, order=order, mode=mode, prefilter=False, output=out.dtype)
        vals[outside] = 0 if is_label else fill
        out[z] = vals.reshape(dst_shape[1:])
    return out


def _per_label_linear(lab: np.ndarray, m: np.ndarray, sep, dst_shape, kernels, threads) -> np.ndarray:
    """Per-label linear interpolation + argmax (background = 1 - sum of the others; wins ties)."""
    values = np.unique(lab)
    if values.size and values[0] < 0:
        raise ValueError(f"per-label resampling needs non-negative labels, found {values[0]}")
    labels = [int(v) for v in values if v != 0]
    out = np.zeros(dst_shape, dtype=lab.dtype)
    if not labels:
        return out
    if sep is None:
        total = np.zeros(dst_shape, np.float32)
        best = np.zeros(dst_shape, np.float32)
        for v in labels:
            p = _oblique((lab == v).astype(np.float32), m, dst_shape, "linear", 0.0, is_label=False)
            total += p
            upd = p > best
            best[upd] = p[upd]
            out[upd] = v
        out[best <= 1.0 - total] = 0
        return out
    perm = sep[0]
    full_taps = _axis_taps(sep, dst_shape, lab.shape, kernels)
    total = np.zeros(dst_shape, np.float32)
    best = np.zeros(dst_shape, np.float32)
    from scipy.ndimage import find_objects

    boxes = find_objects(np.clip(lab, 0, None).astype(np.int64))
    for v in labels:
        box = boxes[v - 1] if v - 1 < len(boxes) else None
        if box is None:
            continue
        # per source axis: output positions whose taps touch the label's box
        src_sl, dst_sl, sub_taps = [], [], []
        for k in range(3):
            t = full_taps[k]
            lo, hi = box[k].start, box[k].stop
            touch = np.any((t.index >= lo) & (t.index < hi), axis=0) & ~t.outside
            js = np.nonzero(touch)[0]
            if js.size == 0:
                break
            j0, j1 = int(js[0]), int(js[-1]) + 1
            idx = t.index[:, j0:j1]
            s0, s1 = int(idx.min()), int(idx.max()) + 1
            src_sl.append(slice(s0, s1))
            dst_sl.append(slice(j0, j1))
            sub_taps.append(Taps(idx - s0, None if t.weight is None else t.weight[:, j0:j1], t.outside[j0:j1]))
        else:
            onehot = (lab[tuple(src_sl)] == v).astype(np.float32)
            region = tuple(dst_sl[perm.index(mm)] for mm in range(3))
            sub_shape = [r.stop - r.start for r in region]
            p = _separable(onehot, sep, sub_shape, kernels, 0.0, threads, taps=sub_taps)
            total[region] += p
            b = best[region]
            upd = p > b
            b[upd] = p[upd]
            out[region][upd] = v
    out[best <= 1.0 - total] = 0
    return out
