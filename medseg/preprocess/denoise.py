"""Denoising with SimpleITK filters that respect the voxel spacing.

The array is handed to SimpleITK with its spacing (x, y, z order for ITK); direction and origin
do not change these filters' output, so no orientation conversion is involved. Output float32
(median keeps the input dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.volume import Volume


def _to_sitk(array: np.ndarray, spacing_mm: Sequence[float]):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_mm))))  # (z, y, x) -> ITK (x, y, z)
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img)


def _image_only(vol: Volume, what: str) -> None:
    if vol.is_label:
        raise ValueError(f"{what} smooths intensities; it is not meant for label volumes "
                         f"({vol.meta.get('path', 'volume')})")


def gaussian(vol: Volume, *, sigma_mm: float | Sequence[float] = 1.0) -> Volume:
    """Gaussian smoothing with standard deviation ``sigma_mm`` (scalar or (z, y, x), mm).

    Uses SimpleITK's ``SmoothingRecursiveGaussian`` (recursive IIR approximation, spacing-aware).
    """
    import SimpleITK as sitk

    _image_only(vol, "gaussian")
    sig = np.broadcast_to(np.asarray(sigma_mm, dtype=np.float64), (3,))
    if np.any(sig <= 0) or not np.all(np.isfinite(sig)):
        raise ValueError(f"sigma_mm must be positive, got {sigma_mm}")
    img = _to_sitk(vol.array.astype(np.float32, copy=False), vol.spacing_mm)
    out = sitk.SmoothingRecursiveGaussian(img, [float(s) for s in sig[::-1]])
    return vol.with_array(_from_sitk(out).astype(np.float32, copy=False))


def median(vol: Volume, *, radius_vox: int | Sequence[int] = 1) -> Volume:
    """Median filter over a box of ``2 * radius_vox + 1`` voxels per axis (z, y, x)."""
    import SimpleITK as sitk

    _image_only(vol, "median")
    rad = np.broadcast_to(np.asarray(radius_vox, dtype=int), (3,))
    if np.any(rad < 0):
        raise ValueError(f"radius_vox must be >= 0, got {radius_vox}")
    arr = vol.array
    if arr.dtype == np.bool_ or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = _to_sitk(arr, vol.spacing_mm)
    out = sitk.Median(img, [int(r) for r in rad[::-1]])
    return vol.with_array(_from_sitk(out))


def curvature_anisotropic_diffusion(
    vol: Volume, *, iterations: int = 5, conductance: float = 1.0, time_step_mm: float | None = None
) -> Volume:
    """Edge-preserving curvature anisotropic diffusion (SimpleITK), float32 output.

    ``time_step_mm`` defaults to the stable value ``min(spacing) / 2**(dim + 1)`` = min spacing / 16
    (ITK's stability limit for 3-D); larger values are rejected rather than silently unstable.
    """
    import SimpleITK as sitk

    _image_only(vol, "curvature_anisotropic_diffusion")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if conductance <= 0:
        raise ValueError(f"conductance must be positive, got {conductance}")
    limit = min(vol.spacing_mm) / 16.0
    step = limit if time_step_mm is None else float(time_step_mm)
    if step <= 0 or step > limit * (1 + 1e-9):
        raise ValueError(f"time_step_mm must be in (0, {limit:.4g}] (min spacing / 16) for a stable 3-D "
                         f"diffusion, got {time_step_mm}")
    img = _to_sitk(vol.array.astype(np.float32, copy=False), vol.spacing_mm)
    f = sitk.CurvatureAnisotropicDiffusionImageFilter()
    f.SetNumberOfIterations(int(iterations))
    f.SetConductanceParameter(float(conductance))
    f.SetTimeStep(step)
    out = f.Execute(img)
    return vol.with_array(_from_sitk(out).astype(np.float32, copy=False))
