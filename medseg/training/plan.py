"""Preprocessing plan for training (minimal; built on ``medseg.preprocess``).

A plan is a plain dict saved in the model bundle, so inference applies exactly the same steps::

    {"spacing_mm": [1.0, 1.0, 1.0], "patch_size": [40, 56, 40], "normalization": "zscore",
     "divisor": 8, "median_shape": [36, 50, 35]}

* spacing: the median spacing of the data set unless the config names one; cases whose spacing
  differs by more than 1 % are resampled (cubic image, nearest label) with
  :func:`medseg.preprocess.resample_to_spacing`.
* normalization: per-case z-score over all voxels, or over non-zero voxels (``zscore_nonzero``,
  zeros stay zero) when ``auto`` finds that more than a quarter of the voxels are exactly 0.
* patch size: the median shape rounded up to a multiple of ``divisor``, shrunk until it has at
  most ``max_patch_voxels`` voxels.

>>> round_up([36, 50, 35], 8)
[40, 56, 40]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("medseg.training")


def round_up(shape, divisor: int) -> list[int]:
    return [int(-(-int(s) // divisor) * divisor) for s in shape]


def make_plan(cases: dict, plan_cfg: dict[str, Any]) -> dict[str, Any]:
    """Plan from the loaded cases (``{id: RawCase}``) and the ``plan`` config section (overrides win)."""
    spacings = np.array([c.spacing_mm for c in cases.values()], dtype=np.float64)
    if plan_cfg["spacing_mm"] == "auto":
        spacing = np.median(spacings, axis=0)
    else:
        spacing = np.asarray(plan_cfg["spacing_mm"], dtype=np.float64)
    shapes = np.array([np.array(c.label.shape) * np.array(c.spacing_mm) / spacing for c in cases.values()])
    median_shape = np.ceil(np.median(shapes, axis=0)).astype(int)
    divisor = int(plan_cfg["divisor"])
    if plan_cfg["patch_size"] == "auto":
        patch = round_up(median_shape, divisor)
        while np.prod(patch) > plan_cfg["max_patch_voxels"] and max(patch) > divisor:
            k = int(np.argmax(patch))
            patch[k] -= divisor
    else:
        patch = [int(p) for p in plan_cfg["patch_size"]]
    norm = plan_cfg["normalization"]
    if norm == "auto":
        zero_frac = float(np.median([np.mean(c.image == 0) for c in cases.values()]))
        norm = "zscore_nonzero" if zero_frac > 0.25 else "zscore"
    plan = {
        "spacing_mm": [float(s) for s in spacing],
        "patch_size": patch,
        "normalization": norm,
        "divisor": divisor,
        "median_shape": [int(s) for s in median_shape],
    }
    log.info("plan: spacing %s mm, patch %s, normalization %s (median shape %s)", plan["spacing_mm"], patch,
             norm, plan["median_shape"])
    return plan


def channel_methods(method, channels: int) -> list:
    """One normalisation per channel: a single method (string or ``{scheme: ct, ...}`` dict) applies
    to every channel; a list gives one per channel (``medseg plan`` writes one per modality)."""
    if isinstance(method, (list, tuple)):
        if len(method) != channels:
            from medseg.errors import ConfigError

            raise ConfigError(f"plan.normalization lists {len(method)} methods for {channels} channel(s)")
        return list(method)
    return [method] * channels


def normalize(image: np.ndarray, method) -> np.ndarray:
    """Intensity normalisation of ``image`` (C, z, y, x) -> float32, channel by channel: per-case
    z-score (:func:`medseg.preprocess.normalize.zscore_array`; ``zscore_nonzero`` keeps zeros at 0),
    ``none``, or CT's data-set statistics ``{scheme: ct, clip: [lo, hi], mean, std}`` (clip, then
    ``(x - mean) / std``, as :func:`medseg.preprocess.normalize.clip_zscore`)."""
    from medseg.preprocess.normalize import clip_zscore_array, zscore_array

    out = np.empty(image.shape, dtype=np.float32)
    for c, method in enumerate(channel_methods(method, image.shape[0])):
        x = image[c]
        if isinstance(method, dict):
            out[c] = clip_zscore_array(x, clip=method["clip"], mean=float(method["mean"]), std=float(method["std"]))
            continue
        if method == "none":
            out[c] = x
            continue
        mask = x != 0 if method == "zscore_nonzero" else None
        if mask is not None and not mask.any():
            out[c] = 0.0
            continue
        out[c] = zscore_array(x, mask=mask)
        if mask is not None:
            out[c][~mask] = 0.0
    return out


def resample_case(image: np.ndarray, label: np.ndarray | None, spacing_mm, target_mm, *,
                  threads: int | None = None):
    """Resample (C, z, y, x) image (cubic B-spline) and (z, y, x) label (nearest) to ``target_mm``.

    Uses :func:`medseg.preprocess.resample_to_spacing` (field of view preserved, output shape
    ``round(n * spacing / target)``, the grid of :func:`medseg.preprocess.grid.spacing_grid`;
    on strongly anisotropic data the low-resolution axis is interpolated with nearest neighbour,
    nnU-Net's rule), so training, ``medseg predict`` and ``medseg.preprocess`` plans resample
    with one implementation. Returns the inputs unchanged when every axis is within 1 % of the target.
    """
    from medseg.preprocess.resample import resample_to_spacing
    from medseg.volume import Volume

    sp, tg = np.asarray(spacing_mm, float), np.asarray(target_mm, float)
    if np.all(np.abs(sp / tg - 1) < 0.01):
        return image, label
    img = np.stack([resample_to_spacing(Volume(np.asarray(ch, dtype=np.float32), tuple(sp)), tuple(tg),
                                        order="cubic", threads=threads).array for ch in image])
    lab = None
    if label is not None:
        lab = resample_to_spacing(Volume(label, tuple(sp), is_label=True), tuple(tg), label_order="nearest",
                                  threads=threads).array
    return img.astype(np.float32, copy=False), lab


def apply_plan(image: np.ndarray, label: np.ndarray | None, spacing_mm, plan: dict[str, Any]):
    """Apply ``plan`` to one case: resample to the plan spacing, then normalise.

    Parameters
    ----------
    image : (C, z, y, x) array.
    label : (z, y, x) integer array or None.
    spacing_mm : (z, y, x) spacing of the inputs.

    Returns
    -------
    (image float32 (C, z', y', x'), label uint8 (z', y', x') or None)
    """
    img, lab = resample_case(image, label, spacing_mm, plan["spacing_mm"])
    img = normalize(img, plan["normalization"])
    return img, (None if lab is None else np.ascontiguousarray(lab, dtype=np.uint8))
