"""Window placement and blending weights for sliding-window inference (no model code here).

Placement (the same as MONAI's ``sliding_window_inference``, so results can be compared
voxel by voxel): along each spatial axis windows start every ``int(roi * (1 - overlap))``
voxels (at least 1; a window as large as the axis gives one window), and the last window is
moved back so that it ends flush with the volume. Volumes smaller than the window are padded
first (see :func:`pad_amounts`).

Gaussian blending uses ``exp(-x^2 / (2 sigma^2))`` with ``x`` measured from the window centre
``(roi - 1) / 2`` and ``sigma = roi * sigma_scale`` (``sigma_scale = 1/8`` as in nnU-Net and
MONAI), floored at ``max(min(weights), 1e-3)`` so that window corners never get a weight of 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

BLEND_MODES = ("gaussian", "constant")


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis.

    Parameters
    ----------
    size : int
        Axis length in voxels, at least ``roi`` (pad smaller volumes first).
    roi : int
        Window length in voxels.
    overlap : float
        Fraction in ``[0, 1)`` of a window shared with the next one.

    Examples
    --------
    >>> window_starts(160, 64, 0.5)
    [0, 32, 64, 96]
    >>> window_starts(100, 64, 0.5)
    [0, 32, 36]
    >>> window_starts(64, 64, 0.5)
    [0]
    """
    if roi < 1 or size < roi:
        raise ConfigError(f"window of {roi} voxels does not fit an axis of {size} voxels (pad the volume first)")
    if size == roi:
        return [0]
    step = max(int(roi * (1.0 - overlap)), 1)
    n = math.ceil((size - roi) / step) + 1
    return [min(i * step, size - roi) for i in range(n)]


def window_grid(shape: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> list[tuple[int, ...]]:
    """All window start corners, last axis fastest (C order), for a padded spatial ``shape``."""
    per_axis = [window_starts(s, r, o) for s, r, o in zip(shape, roi, overlap)]
    return list(product(*per_axis))


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float, *, axis: int = 0) -> int:
    """How many windows :func:`medseg.inference.sliding_window` runs over a volume of spatial ``shape``
    (padded to at least ``roi`` first); a 2D ``roi`` (one size fewer) goes slice by slice along ``axis``.

    >>> count_windows((160, 100, 64), (64, 64, 64), 0.5)     # 4 x 3 x 1
    12
    >>> count_windows((10, 100, 64), (64, 64), 0.5, axis=0)  # 10 slices x 3 x 1
    30
    """
    shape = [int(s) for s in shape]
    slices = 1
    if len(roi) == len(shape) - 1:
        slices = shape.pop(axis)
    per_axis = [len(window_starts(max(s, int(r)), int(r), float(overlap))) for s, r in zip(shape, roi)]
    return slices * math.prod(per_axis)


def pad_amounts(shape: Sequence[int], roi: Sequence[int]) -> list[tuple[int, int]]:
    """``(before, after)`` padding per axis so every axis is at least ``roi`` long (centred, floor before)."""
    out = []
    for s, r in zip(shape, roi):
        diff = max(r - s, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


@lru_cache(maxsize=16)
def importance_map_np(roi: tuple[int, ...], blend: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """:func:`importance_map` as a float32 numpy array (cached and read-only: do not modify it)."""
    if blend not in BLEND_MODES:
        raise ConfigError(f"blend '{blend}' is not one of {BLEND_MODES}")
    roi = tuple(int(r) for r in roi)
    if blend == "constant":
        w = np.ones(roi, dtype=np.float32)
    else:
        w = np.ones((), dtype=np.float32)
        for r in roi:
            x = np.arange(r, dtype=np.float32) - np.float32((r - 1) / 2.0)
            sigma = np.float32(r * sigma_scale)
            g = np.exp(x * x / (np.float32(-2.0) * sigma * sigma))
            w = w[..., None] * g
        np.maximum(w, max(float(w.min()), 1e-3), out=w)
    w.flags.writeable = False
    return w


def importance_map(
    roi: Sequence[int], *, blend: str = "gaussian", sigma_scale: float = 0.125, device: Any = "cpu"
) -> torch.Tensor:
    """Blending weight of each voxel of a window, shape ``roi``, float32 tensor on ``device``, peak 1.

    Computed once per ``(roi, blend, sigma_scale)`` and cached (:func:`importance_map_np`).

    Examples
    --------
    >>> w = importance_map((8,), blend="gaussian")
    >>> round(float(w[0]), 4), round(float(w[3]), 4)   # exp(-3.5**2 / 2), exp(-0.5**2 / 2)
    (0.0022, 0.8825)
    """
    return _tensor(importance_map_np(tuple(int(r) for r in roi), blend, float(sigma_scale)), device)


def _tensor(arr: np.ndarray, device: Any):
    """A float32 tensor of a (read-only, cached) numpy array on ``device``; a copy, so it may be modified."""
    import torch

    return torch.from_numpy(np.array(arr)).to(device)


_CACHE_MAX_VOXELS = 1 << 24  # 64 MB of float32; larger normalisers are recomputed, not kept
_SLAB_VOXELS = 1 << 20       # beyond that, by slabs of about this many voxels (at most a window deep)


def _normaliser_np(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: tuple[float, ...], blend: str, sigma_scale: float
) -> np.ndarray:
    w = importance_map_np(roi, blend, sigma_scale)
    out = _add_windows(np.zeros(shape, dtype=np.float32), window_grid(shape, roi, overlap), roi, w, 0)
    out.flags.writeable = False
    return out


def _add_windows(total: np.ndarray, starts, roi: tuple[int, ...], w: np.ndarray, z0: int) -> np.ndarray:
    """Add the weight map ``w`` of every window in ``starts`` (in that order) to ``total``, which holds
    the first-axis positions ``z0 .. z0 + len(total)`` of the volume; a window reaching into it only
    partly adds its overlapping slab."""
    z1 = z0 + total.shape[0]
    for start in starts:
        a, b = max(start[0], z0), min(start[0] + roi[0], z1)
        if a < b:
            total[(slice(a - z0, b - z0), *(slice(s, s + r) for s, r in zip(start[1:], roi[1:])))] += \
                w[a - start[0]:b - start[0]]
    return total


_normaliser_cached = lru_cache(maxsize=4)(_normaliser_np)


def normaliser_slabs(shape: Sequence[int], roi: Sequence[int], overlap: Sequence[float], *, blend: str = "gaussian",
                     sigma_scale: float = 0.125, slab: int | None = None):
    """``(z0, z1, rows)``: the normaliser of a padded spatial ``shape`` a slab of the first axis at a time
    (one slab, the cached whole, up to :data:`_CACHE_MAX_VOXELS` voxels): no volume-sized weight map beside
    an accumulator. Each slab adds the windows that reach into it in the order :func:`normaliser` adds them,
    so every voxel gets the very same sum (bitwise). ``slab``: voxels of the first axis per slab (default:
    the window's, or fewer so that a slab has about a million voxels)."""
    shape = tuple(int(s) for s in shape)
    roi = tuple(int(r) for r in roi)
    ov = tuple(float(o) for o in overlap)
    if math.prod(shape) <= _CACHE_MAX_VOXELS:
        yield 0, shape[0], normaliser_np(shape, roi, ov, blend=blend, sigma_scale=sigma_scale)
        return
    starts = window_grid(shape, roi, ov)
    plane = math.prod(shape[1:])
    step = max(1, int(slab or min(roi[0], _SLAB_VOXELS // max(1, plane))))   # a few MiB: no slab beside acc
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        yield z0, z1, normaliser_rows(shape, roi, starts, z0, z1, blend=blend, sigma_scale=sigma_scale)


def divide_by_normaliser_(
    acc: Any,
    roi: Sequence[int],
    overlap: Sequence[float],
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    slab: int | None = None,
) -> Any:
    """``acc /= normaliser(acc's spatial shape, ...)`` in place for ``acc`` ``(N, K, *spatial)``, a numpy
    array or a tensor (on any device), slab by slab when the volume is too large to cache the normaliser
    (:func:`normaliser_slabs`)."""
    numpy = isinstance(acc, np.ndarray)
    for z0, z1, total in normaliser_slabs(acc.shape[2:], roi, overlap, blend=blend, sigma_scale=sigma_scale,
                                          slab=slab):
        part = acc[:, :, z0:z1]
        if numpy:
            part /= total
        else:
            part.div_(_tensor(total, acc.device))
    return acc


def normaliser_rows(shape: Sequence[int], roi: tuple[int, ...], starts: Sequence[tuple[int, ...]], z0: int, z1: int,
                    *, blend: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Rows ``z0:z1`` (first spatial axis) of :func:`normaliser` for the windows ``starts`` over ``shape``:
    bitwise those of the whole one (the same windows added in the same order), without making it."""
    w = importance_map_np(roi, blend, float(sigma_scale))
    return _add_windows(np.zeros((z1 - z0, *shape[1:]), dtype=np.float32), starts, roi, w, z0)


def normaliser_np(shape: Sequence[int], roi: Sequence[int], overlap: Sequence[float], *, blend: str = "gaussian",
                  sigma_scale: float = 0.125) -> np.ndarray:
    """Sum of the importance maps of all windows over a padded spatial ``shape`` (one channel), float32.

    Window placement depends only on the shapes, so this is computed once and cached (up to
    2**24 voxels, read-only; larger ones are recomputed, which costs one weighted add per window);
    dividing the weighted sum of window outputs by it gives the blended prediction.
    """
    key = (tuple(int(s) for s in shape), tuple(int(r) for r in roi), tuple(float(o) for o in overlap))
    fn = _normaliser_cached if math.prod(key[0]) <= _CACHE_MAX_VOXELS else _normaliser_np
    return fn(*key, blend, float(sigma_scale))


def normaliser(
    shape: Sequence[int],
    roi: Sequence[int],
    overlap: Sequence[float],
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    device: Any = "cpu",
) -> torch.Tensor:
    """:func:`normaliser_np` as a float32 tensor on ``device`` (a copy: it may be modified)."""
    return _tensor(normaliser_np(shape, roi, overlap, blend=blend, sigma_scale=sigma_scale), device)


def mirror_dims(axes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Array dims to flip for every subset of spatial ``axes`` (the empty one, no flip, first), in a
    ``(N, C, *spatial)`` layout."""
    from medseg.inference.tta import mirror_subsets

    return tuple(tuple(2 + a for a in sub) for sub in mirror_subsets(axes))


def slice_flips(mirror_axes: Sequence[int], n_spatial: int, axis: int | None) -> tuple[tuple[int, ...], ...]:
    """:func:`mirror_dims` of the windows of a sliding window mirroring the spatial ``mirror_axes`` of a
    volume of ``n_spatial`` axes; ``axis``: the slicing axis of a 2D model (its windows lack it; flipping
    the slice order changes nothing), None for a model of the volume's dimension. ConfigError for axes that
    are not distinct spatial axes."""
    mirror = tuple(int(a) for a in mirror_axes)
    if len(set(mirror)) != len(mirror) or any(not 0 <= a < n_spatial for a in mirror):
        raise ConfigError(f"mirror_axes {mirror} must be distinct spatial axes in 0..{n_spatial - 1}")
    if axis is None:
        return mirror_dims(mirror)
    return mirror_dims(tuple(a - (a > axis) for a in mirror if a != axis))


class WindowCounter:
    """Windows through the model(s) so far for one case, reported as ``report(done, total)`` (progress)."""

    def __init__(self, report, total: int):
        self.report, self.total, self.done = report, int(total), 0

    def add(self, n: int) -> None:
        self.done = min(self.done + int(n), self.total)    # an out-of-memory retry re-runs windows
        self.report(self.done, self.total)

    def wrap(self, inner) -> Counted:
        """``inner`` wrapped so that every forward pass reports its windows (a batch of B: B windows)."""
        return Counted(inner, self)


class Counted:
    """A model (a torch module or a backend's runner) that reports each batch to a :class:`WindowCounter`;
    it passes on the model's ``training`` and ``takes_numpy`` flags and, for torch, its ``parameters``."""

    def __init__(self, inner, counter: WindowCounter):
        self.inner, self.counter = inner, counter
        self.training = bool(getattr(inner, "training", False))
        self.takes_numpy = bool(getattr(inner, "takes_numpy", False))

    def parameters(self):
        return self.inner.parameters() if hasattr(self.inner, "parameters") else iter(())

    def __call__(self, x):
        out = self.inner(x)
        self.counter.add(x.shape[0])
        return out
