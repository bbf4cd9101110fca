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


def apply_taps(a: np.ndarray, axis: int, taps: Taps, *, fill: float | None = None,
               threads: int | None = None) -> np.ndarray:
    """Resample ``a`` along ``axis`` with ``taps``. Weighted kernels give float32, nearest keeps dtype.

    Outside positions get ``fill`` (None: left as the clamped edge value)."""
    n_out = taps.index.shape[1]
    shape = list(a.shape)
    shape[axis] = n_out
    dtype = a.dtype if taps.weight is None else np.float32
    out = np.empty(shape, dtype=dtype)
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
