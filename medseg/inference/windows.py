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

import torch

from medseg.errors import ConfigError

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
def _importance_map_cpu(roi: tuple[int, ...], blend: str, sigma_scale: float) -> torch.Tensor:
    if blend == "constant":
        return torch.ones(roi, dtype=torch.float32)
    w = None
    for r in roi:
        x = torch.arange(r, dtype=torch.float32) - (r - 1) / 2.0
        sigma = r * sigma_scale
        g = torch.exp(x * x / (-2.0 * sigma * sigma))
        w = g if w is None else w.unsqueeze(-1) * g
    floor = max(float(w.min()), 1e-3)
    return w.clamp_(min=floor)


def importance_map(
    roi: Sequence[int], *, blend: str = "gaussian", sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Blending weight of each voxel of a window, shape ``roi``, float32, peak 1.

    Computed once per ``(roi, blend, sigma_scale)`` and cached; do not modify the result.

    Examples
    --------
    >>> w = importance_map((8,), blend="gaussian")
    >>> round(float(w[0]), 4), round(float(w[3]), 4)   # exp(-3.5**2 / 2), exp(-0.5**2 / 2)
    (0.0022, 0.8825)
    """
    if blend not in BLEND_MODES:
        raise ConfigError(f"blend '{blend}' is not one of {BLEND_MODES}")
    return _importance_map_cpu(tuple(int(r) for r in roi), blend, float(sigma_scale)).to(device)


_CACHE_MAX_VOXELS = 1 << 24  # 64 MB of float32; larger normalisers are recomputed, not kept
_SLAB_VOXELS = 1 << 20       # beyond that, by slabs of about this many voxels (at most a window deep)


def _normaliser_cpu(
    shape: tuple[int, ...], roi: tuple[int, ...], overlap: tuple[float, ...], blend: str, sigma_scale: float
) -> torch.Tensor:
    w = _importance_map_cpu(roi, blend, sigma_scale)
    return _add_windows(torch.zeros(shape, dtype=torch.float32), window_grid(shape, roi, overlap), roi, w, 0)


def _add_windows(total: torch.Tensor, starts, roi: tuple[int, ...], w: torch.Tensor, z0: int) -> torch.Tensor:
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


_normaliser_cached = lru_cache(maxsize=4)(_normaliser_cpu)


def divide_by_normaliser_(
    acc: torch.Tensor,
    roi: Sequence[int],
    overlap: Sequence[float],
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    slab: int | None = None,
) -> torch.Tensor:
    """``acc /= normaliser(acc's spatial shape, ...)`` in place for ``acc`` ``(N, K, *spatial)``, with
    the normaliser made one slab of the first spatial axis at a time when the volume is too large to
    cache it (:data:`_CACHE_MAX_VOXELS`): no volume-sized weight map beside the accumulator. Each slab
    adds the windows that reach into it in the order :func:`normaliser` adds them, so every voxel gets
    the very same sum (bitwise). ``slab``: voxels of the first axis per slab (default: the window's, or
    fewer so that a slab has about a million voxels)."""
    shape = tuple(int(s) for s in acc.shape[2:])
    roi = tuple(int(r) for r in roi)
    ov = tuple(float(o) for o in overlap)
    if math.prod(shape) <= _CACHE_MAX_VOXELS:
        return acc.div_(normaliser(shape, roi, ov, blend=blend, sigma_scale=sigma_scale, device=acc.device))
    starts = window_grid(shape, roi, ov)
    plane = math.prod(shape[1:])
    step = max(1, int(slab or min(roi[0], _SLAB_VOXELS // max(1, plane))))   # a few MiB: no slab beside acc
    for z0 in range(0, shape[0], step):
        z1 = min(z0 + step, shape[0])
        total = normaliser_rows(shape, roi, starts, z0, z1, blend=blend, sigma_scale=sigma_scale)
        acc[:, :, z0:z1].div_(total.to(acc.device))
    return acc


def normaliser_rows(shape: Sequence[int], roi: tuple[int, ...], starts: Sequence[tuple[int, ...]], z0: int, z1: int,
                    *, blend: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Rows ``z0:z1`` (first spatial axis) of :func:`normaliser` for the windows ``starts`` over ``shape``:
    bitwise those of the whole one (the same windows added in the same order), without making it."""
    w = _importance_map_cpu(roi, blend, float(sigma_scale))
    return _add_windows(torch.zeros((z1 - z0, *shape[1:]), dtype=torch.float32), starts, roi, w, z0)


def normaliser(
    shape: Sequence[int],
    roi: Sequence[int],
    overlap: Sequence[float],
    *,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sum of the importance maps of all windows over a padded spatial ``shape`` (one channel).

    Window placement depends only on the shapes, so this is computed once and cached (up to
    2**24 voxels; larger ones are recomputed, which costs one weighted add per window); dividing
    the weighted sum of window outputs by it gives the blended prediction. Do not modify it.
    """
    key = (tuple(int(s) for s in shape), tuple(int(r) for r in roi), tuple(float(o) for o in overlap))
    fn = _normaliser_cached if math.prod(key[0]) <= _CACHE_MAX_VOXELS else _normaliser_cpu
    return fn(*key, blend, float(sigma_scale)).to(device)
