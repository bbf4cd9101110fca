"""Pipeline stages for preprocessing: thin wrappers that map the plain functions over a folder.

Registered names: ``crop_foreground``, ``denoise_gaussian``, ``denoise_median``,
``denoise_curvature``, ``resample``, ``zscore``, ``minmax``, ``ct_window``. Each takes ``input``
(file or folder; default the previous volume stage's output) plus the function's parameters and
writes ``OUTPUT/<stage name>/<case>.nii.gz``. Example::

    stages:
      - {stage: crop_foreground, params: {input: data/images, threshold: -500, margin_vox: 2}}
      - {stage: resample, params: {spacing_mm: [1.5, 1.5, 1.5], order: linear}}
      - {stage: ct_window, params: {preset: abdomen}}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from medseg.errors import ConfigError
from medseg.preprocess.crop import crop_to_foreground
from medseg.preprocess.denoise import curvature_anisotropic_diffusion, gaussian, median
from medseg.preprocess.normalize import ct_window, minmax, zscore
from medseg.preprocess.resample import resample_to_spacing
from medseg.stages.base import volume_stage
from medseg.volume import Volume


def crop_foreground(vol: Volume, *, threshold: float | None = None, margin_vox: int | Sequence[int] = 0) -> Volume:
    """Crop to the box around ``vol > threshold`` (non-zero voxels when no threshold)."""
    return crop_to_foreground(vol, threshold=threshold, margin_vox=margin_vox)[0]


def resample(vol: Volume, *, spacing_mm: Sequence[float], order: str = "linear", label: bool = False,
             label_order: str = "nearest", anisotropy_threshold: float = 3.0,
             anisotropic_order: str = "nearest") -> Volume:
    """Resample to ``spacing_mm`` (z, y, x); ``label: true`` treats the inputs as label maps."""
    if label and not vol.is_label:
        vol = vol.with_array(vol.array, is_label=True)
    return resample_to_spacing(vol, spacing_mm, order=order, label_order=label_order,
                               anisotropy_threshold=anisotropy_threshold, anisotropic_order=anisotropic_order)


def _zscore(vol: Volume, *, mask_nonzero: bool = False) -> Volume:
    """Z-score (statistics over the non-zero voxels when ``mask_nonzero``)."""
    return zscore(vol, mask_nonzero=mask_nonzero)


def _config_errors(name: str, fn: Callable[..., Volume]) -> Callable[..., Volume]:
    """Bad parameter values (ValueError) become ConfigError naming the stage and the case."""

    @functools.wraps(fn)
    def wrapped(vol: Volume, **params: Any) -> Volume:
        try:
            return fn(vol, **params)
        except ValueError as exc:
            raise ConfigError(f"stage {name}: {exc}", path=vol.meta.get("path"), code="bad_params") from None

    return wrapped


for _name, _fn in [
    ("crop_foreground", crop_foreground),
    ("denoise_gaussian", gaussian),
    ("denoise_median", median),
    ("denoise_curvature", curvature_anisotropic_diffusion),
    ("resample", resample),
    ("zscore", _zscore),
    ("minmax", minmax),
    ("ct_window", ct_window),
]:
    volume_stage(_name, _config_errors(_name, _fn))
