"""Class probabilities with numpy around networks that take and return numpy arrays (OpenVINO runners,
:class:`~medseg.inference.openvino_runtime.OpenVinoModel`): the sliding window, mirroring TTA, softmax
and fold mean of the predictor, without importing torch.

Window placement, Gaussian weights, normaliser and flips are :mod:`medseg.inference.windows`', the ones
the torch path (:mod:`medseg.inference.sliding_window`, :mod:`medseg.inference.tta`) uses, so both give
the same windows; the sums are float32 in the same order (the two agree to float32 rounding, a test). A
prediction on OpenVINO takes this path whether its networks came from the cache or were converted in
this run, so a cohort's labels do not depend on the state of the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.inference.windows import (
    divide_by_normaliser_,
    importance_map_np,
    mirror_dims,
    pad_amounts,
    slice_flips,
    window_grid,
)

Model = Callable[[np.ndarray], np.ndarray]
CHUNK_VOXELS = 1 << 20     # voxels (all classes) the softmax works on at a time


def takes_numpy(models: Sequence[object]) -> bool:
    """True when every model runs on numpy arrays (this module can drive them)."""
    return bool(models) and all(getattr(m, "takes_numpy", False) for m in models)


def softmax_(logits: np.ndarray, *, chunk_voxels: int = CHUNK_VOXELS) -> np.ndarray:
    """Softmax over axis 1 of a float32 ``(N, K, *spatial)`` array, written over it a slab of the first
    spatial axis at a time (no second array of its size). Returns ``logits``."""
    n = logits.shape[2]
    step = max(1, int(chunk_voxels) // max(1, math.prod(logits.shape[:2]) * math.prod(logits.shape[3:])))
    for z0 in range(0, n, step):
        part = logits[:, :, z0:z0 + step]
        part -= part.max(axis=1, keepdims=True)
        np.exp(part, out=part)
        part /= part.sum(axis=1, keepdims=True)
    return logits


def sliding_window_np(model: Model, image: np.ndarray, roi: Sequence[int], overlap: float = 0.5, *,
                      batch_size: int = 4, blend: str = "gaussian", sigma_scale: float = 0.125, axis: int = 0,
                      mirror_axes: Sequence[int] = (), pad_value: float = 0.0) -> np.ndarray:
    """:func:`medseg.inference.sliding_window.sliding_window` for a numpy model and a float32
    ``(N, C, *spatial)`` array: blended float32 logits ``(N, K, *spatial)``. A ``roi`` of one size fewer
    than the spatial axes runs a 2D model slice by slice along ``axis``."""
    roi = tuple(int(r) for r in roi)
    n_spatial = image.ndim - 2
    if len(roi) == n_spatial - 1:
        axis %= n_spatial
        flips = slice_flips(mirror_axes, n_spatial, axis)
        n, c = image.shape[:2]
        moved = np.moveaxis(image, 2 + axis, 1)            # (N, D, C, *rest)
        d, rest = moved.shape[1], moved.shape[3:]
        out = _sliding(model, moved.reshape(n * d, c, *rest), roi, overlap, batch_size, blend, sigma_scale,
                       pad_value, flips)
        out = np.moveaxis(out.reshape(n, d, out.shape[1], *rest), 1, 2)
        return np.ascontiguousarray(np.moveaxis(out, 2, 2 + axis))
    return _sliding(model, image, roi, overlap, batch_size, blend, sigma_scale, pad_value,
                    slice_flips(mirror_axes, n_spatial, None))


def _sliding(model, image, roi, overlap, batch_size, blend, sigma_scale, pad_value, flips) -> np.ndarray:
    spatial = image.shape[2:]
    ov = (float(overlap),) * len(roi)
    pads = pad_amounts(spatial, roi)
    padded_any = any(a or b for a, b in pads)
    if padded_any:
        image = np.pad(image, ((0, 0), (0, 0), *pads), constant_values=pad_value)
    jobs = [(b, s) for b in range(image.shape[0]) for s in window_grid(image.shape[2:], roi, ov)]
    weight = None if blend == "constant" else importance_map_np(roi, blend, float(sigma_scale))
    acc: Any = None
    tmp: Any = None
    x = np.empty((min(batch_size, len(jobs)), image.shape[1], *roi), dtype=np.float32)
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        xb = x[:len(chunk)]
        for j, (b, start) in enumerate(chunk):
            xb[j] = image[_window(b, start, roi)]
        pred = _forward(model, xb, roi, flips)
        if acc is None:
            acc = np.zeros((image.shape[0], pred.shape[1], *image.shape[2:]), dtype=np.float32)
            tmp = np.empty(pred.shape[1:], dtype=np.float32)
        for (b, start), p in zip(chunk, pred):
            if weight is not None:
                p = np.multiply(p, weight, out=tmp)
            acc[_window(b, start, roi)] += p
    divide_by_normaliser_(acc, roi, ov, blend=blend, sigma_scale=sigma_scale)
    if padded_any:
        acc = np.ascontiguousarray(acc[(slice(None), slice(None), *(slice(a, a + s) for (a, _), s in
                                                                     zip(pads, spatial)))])
    return acc


def _window(b: int, start: Sequence[int], roi: Sequence[int]) -> tuple:
    return (b, slice(None), *(slice(s, s + r) for s, r in zip(start, roi)))


def _forward(model: Model, x: np.ndarray, roi: tuple[int, ...], flips) -> np.ndarray:
    """The model's float32 logits for a batch; with several ``flips``, the mean over the flipped batches,
    each flipped back."""
    total: Any = None
    for dims in flips:
        y = model(np.ascontiguousarray(np.flip(x, dims)) if dims else x)
        if not isinstance(y, np.ndarray) or y.ndim != x.ndim or tuple(y.shape[2:]) != roi or y.shape[0] != x.shape[0]:
            raise MedsegError(f"sliding window: the model must return (B, K, *{roi}) for a {x.shape} input, got "
                              f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}", code="bad_model_output")
        y = np.flip(y, dims) if dims else y.astype(np.float32, copy=False)
        if total is None:      # the model's own array is only read: a copy when sums go into it
            total = y if len(flips) == 1 else np.array(y, dtype=np.float32)
        else:
            np.add(total, y, out=total)
    if len(flips) > 1:
        total /= len(flips)
    return total


def probabilities_np(models: Sequence[Model], image: np.ndarray, roi: Sequence[int], *, overlap: float,
                     batch_size: int, blend: str, axis: int, tta_axes: Sequence[int], tta_mode: str,
                     group: int = 1) -> np.ndarray:
    """Mean softmax probabilities ``(K, *spatial)`` over ``models`` (folds) of a float32 ``(C, *spatial)``
    image, with mirroring TTA over ``tta_axes`` as :meth:`medseg.inference.predictor.Predictor._probabilities`
    does it: ``"window"`` flips inside the sliding window (logits averaged), ``"volume"`` flips the whole
    volume (probabilities averaged; ``group`` flipped copies share the forward passes)."""
    x = image[None]
    opts: dict[str, Any] = dict(overlap=overlap, batch_size=batch_size, blend=blend, axis=axis)
    total: Any = None
    for model in models:
        if tta_mode == "window" and tta_axes:
            p = softmax_(sliding_window_np(model, x, roi, mirror_axes=tta_axes, **opts))
        else:
            p = _mirror_volume(lambda v, m=model: sliding_window_np(m, v, roi, **opts), x, tta_axes, group)
        total = p if total is None else np.add(total, p, out=total)
    if len(models) > 1:
        total /= len(models)
    return total[0]


def _mirror_volume(predict, image: np.ndarray, axes: Sequence[int], group: int) -> np.ndarray:
    """:func:`medseg.inference.tta.mirror_tta` with the softmax, for numpy."""
    subsets = mirror_dims(axes)
    n = image.shape[0]
    total: Any = None
    for g0 in range(0, len(subsets), max(1, group)):
        flips = subsets[g0:g0 + group]
        xs = [np.flip(image, dims) if dims else image for dims in flips]
        ps = softmax_(predict(xs[0] if len(xs) == 1 else np.concatenate(xs)))
        for i, dims in enumerate(flips):
            p = ps[i * n:(i + 1) * n]
            p = np.flip(p, dims) if dims else p
            total = p if total is None else np.add(total, p, out=total)    # ps is ours: summed in place
    total /= len(subsets)
    return np.ascontiguousarray(total)
