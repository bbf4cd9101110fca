"""The training plan: the preprocessing plan of a training run, made from its cases and config.

:func:`make_plan` fills in the ``plan`` config section's ``auto`` values and returns a
preprocessing plan in the one format of :mod:`medseg.preprocess.plan` (applied to every case with
:func:`medseg.preprocess.plan.apply_plan_arrays` and saved in the model bundle, so inference applies
exactly the same steps), plus the training keys ``patch_size``, ``divisor`` and ``median_shape``::

    {"spacing_mm": [1.0, 1.0, 1.0], "patch_size": [40, 56, 40], "normalization": "zscore",
     "divisor": 8, "median_shape": [36, 50, 35]}

* spacing: the median spacing of the data set unless the config names one; cases whose spacing
  differs by more than 1 % are resampled (cubic image, nearest label; the plan format's defaults).
* normalization: per-case z-score over all voxels, or over non-zero voxels (``zscore_nonzero``,
  zeros stay zero) when ``auto`` finds that more than a quarter of the voxels are exactly 0; or
  any method of :mod:`medseg.preprocess.normalize` named in the config.
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
