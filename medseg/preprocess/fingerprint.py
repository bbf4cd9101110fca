"""Data-set fingerprint: spacings, shapes and foreground intensity statistics.

Like nnU-Net's fingerprint, foreground intensities are a random sample (fixed seed) of the voxels
inside the labels (``label > 0``) of every case, pooled over the data set. Without labels the
sample comes from the non-zero voxels of each image (documented fallback; a CT's air is then
included, so give labels for CT whenever possible).

The result is a plain dict (YAML-safe) so it can be saved next to the plan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryMismatchError, MedsegError, status_of
from medseg.fsutil import case_id
from medseg.preprocess.crop import foreground_box

log = logging.getLogger("medseg.preprocess.fingerprint")

PERCENTILES = (0.5, 50.0, 99.5)


def _case_stats(image_path: Path, label_path: Path | None, samples: int, rng: np.random.Generator
                ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from medseg.io import read_volume

    img = read_volume(image_path)
    a = img.array
    if label_path is not None:
        lab = read_volume(label_path, is_label=True)
        why = lab.grid_mismatch(img, tol_mm=1e-3)
        if why:
            raise GeometryMismatchError(f"label is not on the image grid ({why})", path=label_path)
        fg = lab.array > 0
        labels = sorted(int(v) for v in np.unique(lab.array) if v > 0)
    else:
        fg = a != 0
        labels = []
    box = foreground_box(a != 0)
    vals = a[fg]
    if vals.size > samples:
        vals = rng.choice(vals, samples, replace=False)
    # a small whole-image sample for the modality guess
    flat = a.ravel()
    whole = flat[rng.integers(0, flat.size, size=min(flat.size, samples))]
    stats = {
        "case": case_id(image_path),
        "shape": list(img.shape),
        "spacing_mm": [round(s, 6) for s in img.spacing_mm],
        "nonzero_crop_shape": list(box.shape),
        "nonzero_crop_fraction": float(np.prod(box.shape) / np.prod(img.shape)),
        "foreground_voxels": int(fg.sum()),
        "labels": labels,
        "dtype": str(a.dtype),
    }
    return stats, vals.astype(np.float64), whole.astype(np.float64)


def guess_modality(whole_image_values: np.ndarray) -> str:
    """``"CT"`` when values look like Hounsfield units, else ``"other"``.

    Rule: integer-valued, a low tail at air (0.5th percentile <= -500 HU) and nothing below
    -4000 (CT padding is at most about -3024). MR and normalised data fail one of these.
    """
    v = np.asarray(whole_image_values, dtype=np.float64)
    if v.size == 0:
        return "other"
    integer = bool(np.all(np.abs(v - np.round(v)) < 1e-3))
    low = float(np.percentile(v, 0.5))
    return "CT" if integer and -4000 <= v.min() and low <= -500 else "other"


def fingerprint(
    image_paths: Sequence[str | Path],
    label_paths: Sequence[str | Path | None] | None = None,
    *,
    samples_per_case: int = 10_000,
    seed: int = 1234,
) -> dict[str, Any]:
    """Fingerprint of a data set.

    Parameters
    ----------
    image_paths : paths of the images.
    label_paths : matching label paths (same order; None entries allowed) or None.
    samples_per_case : foreground voxels sampled per case for the intensity statistics.

    Returns
    -------
    dict with ``cases`` (per case shape, spacing, crop, labels), ``median_spacing_mm``,
    ``median_shape``, ``spacing_percentile10_mm``, ``foreground_intensity`` (percentiles 0.5/50/99.5,
    mean, std, min, max), ``modality_guess`` and ``failed`` (case -> status, e.g. ``error:truncated``).
    """
    paths = [Path(p) for p in image_paths]
    if label_paths is not None and len(label_paths) != len(paths):
        raise ValueError(f"{len(paths)} images but {len(label_paths)} label paths; give one per image (or None)")
    labels = [None if lp is None else Path(lp) for lp in (label_paths or [None] * len(paths))]
    rng = np.random.default_rng(seed)
    cases, fg_vals, whole_vals, failed = [], [], [], {}
    for ip, lp in zip(paths, labels):
        try:
            st, fv, wv = _case_stats(ip, lp, samples_per_case, rng)
        except MedsegError as exc:
            log.error("%s", exc)
            failed[case_id(ip)] = status_of(exc)
            continue
        cases.append(st)
        fg_vals.append(fv)
        whole_vals.append(wv)
    if not cases:
        raise MedsegError("fingerprint: no readable cases (" + ", ".join(f"{k}: {v}" for k, v in failed.items())
                          + ")", code="no_cases")
    spacings = np.array([c["spacing_mm"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)
    fg = np.concatenate(fg_vals) if fg_vals else np.zeros(0)
    whole = np.concatenate(whole_vals)
    intensity: dict[str, Any] = {"n_samples": int(fg.size)}
    if fg.size:
        pct = np.percentile(fg, PERCENTILES)
        intensity.update({f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct)})
        intensity.update(mean=float(fg.mean()), std=float(fg.std()), min=float(fg.min()), max=float(fg.max()))
    return {
        "n_cases": len(cases),
        "has_labels": label_paths is not None,
        "median_spacing_mm": np.median(spacings, axis=0).tolist(),
        "spacing_percentile10_mm": np.percentile(spacings, 10, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "median_nonzero_crop_fraction": float(np.median([c["nonzero_crop_fraction"] for c in cases])),
        "foreground_intensity": intensity,
        "modality_guess": guess_modality(whole),
        "labels": sorted({v for c in cases for v in c["labels"]}),
        "cases": cases,
        "failed": failed,
    }
