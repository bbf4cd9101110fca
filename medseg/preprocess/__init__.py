"""Preprocessing on Volumes: crop, denoise, resample, normalise; data-set fingerprint and plans.

numpy/scipy/SimpleITK only (no torch). Each operation is a plain function; the pipeline stages
in :mod:`medseg.stages.preprocess` are thin wrappers.
"""

from medseg.preprocess.crop import CropBox, crop_to_foreground, crop_volume, foreground_box, uncrop
from medseg.preprocess.denoise import curvature_anisotropic_diffusion, gaussian, median
from medseg.preprocess.fingerprint import fingerprint
from medseg.preprocess.grid import Grid, grid_of, shape_grid, spacing_grid
from medseg.preprocess.invert import invert_plan
from medseg.preprocess.normalize import CT_WINDOWS, clip_zscore, ct_window, minmax, normalize_channels, zscore
from medseg.preprocess.plan import (
                                    Prepared,
                                    Preprocessed,
                                    apply_plan,
                                    apply_plan_arrays,
                                    propose_plan,
                                    read_plan,
)
from medseg.preprocess.resample import resample_array, resample_array_to_grid, resample_to_grid, resample_to_spacing

__all__ = [
    "CropBox", "crop_to_foreground", "crop_volume", "foreground_box", "uncrop",
    "gaussian", "median", "curvature_anisotropic_diffusion",
    "Grid", "grid_of", "spacing_grid", "shape_grid",
    "CT_WINDOWS", "zscore", "minmax", "ct_window", "clip_zscore", "normalize_channels",
    "resample_array", "resample_array_to_grid", "resample_to_spacing", "resample_to_grid",
    "fingerprint", "propose_plan", "read_plan", "apply_plan", "apply_plan_arrays", "invert_plan", "Preprocessed",
    "Prepared",
]
