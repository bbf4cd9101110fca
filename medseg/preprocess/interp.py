"""Separable 1-D interpolation along array axes (the engine behind resampling).

Each axis is resampled on its own with precomputed integer taps and float32 weights, as
vectorised gathers (``np.take``) plus multiply-adds over whole slabs; work is split over threads
(numpy releases the GIL in these loops). Kernels, at continuous input index ``p``:

* ``nearest``: voxel ``floor(p + 0.5)`` (ties round up, as ITK).
* ``linear``: the two voxels around ``p``; within half a voxel outside the centres the edge
  voxel is repeated (as ITK's ``LinearInterpolateImageFunction``).
* ``cubic``: cubic B-spline of the coefficients obtained with the exact recursive prefilter
  (``scipy.ndimage.spline_filter1d``, mirror boundary); identical kernel and boundary to
  ``scipy.ndimage.map_coordinates(order=3, mode="mirror")`` and ITK's ``BSplineInterpolateImageFunction``.

Positions more than half a voxel outside the array (``p < -0.5`` or ``p > n - 0.5``) are
"outside": they get ``fill`` (as SimpleITK's default pixel value).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

KERNELS = ("nearest", "linear", "cubic")
_EDGE_TOL = 1e-6
_POOL: ThreadPoolExecutor | None = None


def default_threads() -> int:
    """CPUs this process may use (capped at 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="medseg-resample")
    return _POOL


@dataclass(frozen=True)
class Taps:
    """Interpolation of one axis: ``out[j] = sum_t weight[t, j] * in[index[t, j]]``.

    ``index`` (T, n_out) intp within ``[0, n_in)``; ``weight`` (T, n_out) float32 (None for
    nearest); ``outside`` (n_out,) bool marks positions that get the fill value.
    """

    index: np.ndarray
    weight: np.ndarray | None
    outside: np.ndarray
    identity: bool = False


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices about the edge voxel centres (d c b | a b c d | c b a), any distance."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    r = np.mod(idx, period)
    return np.where(r >= n, period - r, r)


def make_taps(pos: np.ndarray, n_in: int, kernel: str) -> Taps:
    """Taps for continuous input indices ``pos`` (1-D, float64) on an axis of ``n_in`` voxels."""
    pos = np.asarray(pos, dtype=np.float64)
    outside = (pos < -0.5 - _EDGE_TOL) | (pos > n_in - 0.5 + _EDGE_TOL)
    if pos.size == n_in and np.all(np.abs(pos - np.arange(n_in)) < 1e-9):
        return Taps(np.arange(n_in, dtype=np.intp)[None, :], None, outside, identity=True)
    if kernel == "nearest":
        idx = np.clip(np.floor(pos + 0.5), 0, n_in - 1).astype(np.intp)
        return Taps(idx[None, :], None, outside)
    if kernel == "linear":
        p = np.clip(pos, 0.0, n_in - 1.0)
        i0 = np.minimum(np.floor(p).astype(np.intp), max(n_in - 2, 0))
        t = p - i0
        i1 = np.minimum(i0 + 1, n_in - 1)
        return Taps(np.stack([i0, i1]), np.stack([1.0 - t, t]).astype(np.float32), outside)
    if kernel == "cubic":
        p = np.clip(pos, -0.5, n_in - 0.5)
        f = np.floor(p)
        t = p - f
        # cubic B-spline weights for voxels f-1, f, f+1, f+2
        w = np.stack([(1 - t) ** 3 / 6.0,
                      (3 * t**3 - 6 * t**2 + 4) / 6.0,
                      (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6.0,
                      t**3 / 6.0])
        idx = f.astype(np.intp)[None, :] + np.arange(-1, 3)[:, None]
        return Taps(_mirror(idx, n_in), w.astype(np.float32), outside)
    raise ValueError(f"unknown interpolation kernel '{kernel}' (use one of {', '.join(KERNELS)})")


def is_identity(taps: Taps, n_in: int) -> bool:
    """True when the taps sample exactly the input voxel centres 0..n_in-1 (any kernel then
    returns the data unchanged: all three kernels interpolate), so the pass can be skipped."""
    return taps.identity and taps.index.shape[1] == n_in


def prefilter_bspline(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Cubic B-spline coefficients (float32) along ``axes`` (mirror boundary); ``a`` is not modified.

    One float32 copy is made and filtered in place axis after axis (scipy filters line by line through
    a buffer, so in place gives the values of filtering into a new array, without a second copy)."""
    from scipy.ndimage import spline_filter1d

    axes = tuple(ax for ax in axes if a.shape[ax] > 1)
    if not axes:
        return np.asarray(a, dtype=np.float32)
    out = np.array(a, dtype=np.float32, copy=True, order="C")
    for ax in axes:
        spline_filter1d(out, order=3, axis=ax, mode="mirror", output=out)
    return out


def spline_taps(a: np.ndarray, axis: int, taps: Taps, *, threads: int | None = None,
                slab_bytes: int = 8 << 20) -> np.ndarray:
    """``apply_taps(prefilter_bspline(a, (axis,)), axis, taps)``: cubic B-spline interpolation along one
    axis, bitwise those values, made a slab of another axis at a time (each slab: a float32 copy,
    filtered along ``axis``, then resampled), so that no float32 copy of the whole of ``a`` exists.

    Filtering and resampling axis after axis (this, once per axis) equals filtering along every axis
    first and resampling after (the operators along different axes commute) up to float rounding,
    and holds at most two intermediate volumes instead of the filtered copy of the input beside them."""
    from scipy.ndimage import spline_filter1d

    if a.shape[axis] <= 1:
        return apply_taps(np.asarray(a, dtype=np.float32), axis, taps, threads=threads)
    s = 1 if axis == 0 else 0                       # the axis the slabs are cut along
    shape = list(a.shape)
    shape[axis] = taps.index.shape[1]
    out = np.empty(shape, dtype=np.float32)
    per_row = max(1, a.size // max(1, a.shape[s]) * 4)
    # slabs of at most slab_bytes, and at most a sixteenth of the float32 volume
    step = max(1, min(int(slab_bytes), a.size * 4 // 16) // per_row)
    where: list = [slice(None)] * a.ndim

    def work(sl: slice) -> None:
        sel = list(where)
        sel[s] = sl
        src = np.array(a[tuple(sel)], dtype=np.float32, order="C")
        spline_filter1d(src, order=3, axis=axis, mode="mirror", output=src)
        apply_taps(src, axis, taps, threads=1, out=out[tuple(sel)])

    slabs = [slice(i, min(i + step, a.shape[s])) for i in range(0, a.shape[s], step)]
    nthreads = threads if threads is not None else default_threads()
    if nthreads > 1 and len(slabs) > 1:
        list(_pool().map(work, slabs))
    else:
        for sl in slabs:
            work(sl)
    return out


def apply_taps(a: np.ndarray, axis: int, taps: Taps, *, fill: float | None = None,
               threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``a`` along ``axis`` with ``taps``. Weighted kernels give float32, nearest keeps dtype.

    Outside positions get ``fill`` (None: left as the clamped edge value). ``out``: where to write
    (a view of the result's shape and dtype, e.g. a slab of a larger array); returned."""
    n_out = taps.index.shape[1]
    shape = list(a.shape)
    shape[axis] = n_out
    dtype = a.dtype if taps.weight is None else np.float32
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"apply_taps: out is {out.dtype} {out.shape}, the result {np.dtype(dtype)} {tuple(shape)}")
    wshape = [1, 1, 1]
    wshape[axis] = -1

    def work(sl: slice) -> None:
        if axis == 0:
            src, idx = a, taps.index[:, sl]
            w = None if taps.weight is None else taps.weight[:, sl]
        else:
            src, idx, w = a[sl], taps.index, taps.weight
        o = out[sl]
        np.take(src, idx[0], axis=axis, out=o)
        if w is None:
            return
        if len(idx) == 2 and np.array_equal(idx[1], np.minimum(idx[0] + 1, a.shape[axis] - 1)):
            # linear: o = a0 + w1 * (a1 - a0), one gather of the differences
            tmp = np.take(src, idx[1], axis=axis)
            tmp -= o
            tmp *= w[1].reshape(wshape)
            o += tmp
            return
        o *= w[0].reshape(wshape)
        tmp = np.empty_like(o)
        for t in range(1, len(idx)):
            np.take(src, idx[t], axis=axis, out=tmp)
            tmp *= w[t].reshape(wshape)
            o += tmp

    if a.dtype != dtype:
        a = a.astype(dtype)
    n0 = out.shape[0]
    nthreads = threads if threads is not None else default_threads()
    if nthreads > 1 and out.size >= 1 << 18 and n0 >= 2:
        k = min(n0, 2 * nthreads)
        bounds = np.linspace(0, n0, k + 1).astype(int)
        list(_pool().map(work, [slice(bounds[i], bounds[i + 1]) for i in range(k)]))
    else:
        work(slice(0, n0))
    if fill is not None and taps.outside.any():
        sel: list = [slice(None)] * 3
        sel[axis] = taps.outside
        out[tuple(sel)] = fill
    return out
