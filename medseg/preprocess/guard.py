"""Input guards: what a model was trained on, recorded in its bundle, and a check of a new case against it.

A bundle's ``input_guard`` (bundle.yaml, written by ``medseg train`` from the training cases)::

    input_guard:
      modality: MRI                        # the data set's channel 0 modality (dataset.json), or CT/other
      n_cases: 208
      foreground_percentiles: {p0.5: 30.0, p50: 210.0, p99.5: 840.0}   # raw intensities under the labels
      spacing_mm: {min: [1, 1, 1], max: [1, 1, 1]}                      # (z, y, x), over the training cases
      field_of_view_mm: {min: [31, 40, 24], max: [43, 59, 47]}          # shape x spacing, (z, y, x)

:func:`check_case` compares one case with it *before* any inference: what is merely unusual is a
warning (spacing or field of view beyond :data:`FAR_FACTOR` of the training range, intensities far
from the training foreground), what is clearly another kind of image is a refusal:

* the case looks like CT (Hounsfield units: air at about -1000 in the 0.5th percentile, nothing below
  -4000) and the model was not trained on CT;
* the model was trained on CT and the case's central intensities (1st..99th percentile) lie wholly
  outside the training foreground's (0.5th..99.5th percentile; HU are absolute, so this is meaningful);
* the field of view's volume is more than :data:`FOV_REFUSE_FACTOR` times the largest training case's,
  or less than 1 / :data:`FOV_REFUSE_FACTOR` of the smallest: another body region (or a whole scan given
  to a model trained on crops).

The thresholds are deliberately wide: a refusal is meant for the CT given to a hippocampus MRI model,
not for an unusual scanner. ``medseg predict --force`` predicts refused cases anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

GUARD_PERCENTILES = (0.5, 50.0, 99.5)
FAR_FACTOR = 2.0            # spacing / field of view beyond [min / 2, max * 2] of training: a warning
FOV_REFUSE_FACTOR = 8.0     # field-of-view volume beyond 8x the largest (1/8 the smallest) training case: refused
SAMPLE = 1_000_000          # voxels looked at per case (a strided sample: percentiles of a 500 MB CT in ~0.1 s)
FOREGROUND_SAMPLES = 10_000


def _round(values: Iterable[float], nd: int = 3) -> list[float]:
    return [round(float(v), nd) for v in values]


def input_guard(cases: Iterable[tuple[np.ndarray, Sequence[float], np.ndarray | None]], modality: str,
                *, seed: int = 0) -> dict[str, Any]:
    """The ``input_guard`` of a bundle from its training cases: ``(image (z, y, x) of channel 0 with raw
    intensities, spacing_mm (z, y, x), label map or None)`` each. Foreground intensities are sampled
    under the labels (non-zero voxels when a case has no label)."""
    rng = np.random.default_rng(seed)
    spacings, fovs, fg = [], [], []
    for image, spacing, label in cases:
        img = np.asarray(image)
        sp = np.asarray(spacing, dtype=np.float64)
        spacings.append(sp)
        fovs.append(np.asarray(img.shape, dtype=np.float64) * sp)
        mask = (np.asarray(label) > 0) if label is not None else img != 0
        vals = img[mask] if mask.any() else img.ravel()
        if vals.size > FOREGROUND_SAMPLES:
            vals = rng.choice(vals, FOREGROUND_SAMPLES, replace=False)
        fg.append(vals.astype(np.float64))
    if not spacings:
        raise ValueError("input_guard needs at least one case")
    pct = np.percentile(np.concatenate(fg), GUARD_PERCENTILES)
    sp_arr, fov_arr = np.stack(spacings), np.stack(fovs)
    return {"modality": str(modality), "n_cases": len(spacings),
            "foreground_percentiles": {f"p{p:g}": round(float(v), 4) for p, v in zip(GUARD_PERCENTILES, pct)},
            "spacing_mm": {"min": _round(sp_arr.min(0), 4), "max": _round(sp_arr.max(0), 4)},
            "field_of_view_mm": {"min": _round(fov_arr.min(0), 1), "max": _round(fov_arr.max(0), 1)}}


def _sample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // SAMPLE)
    return flat[::step].astype(np.float64, copy=False)


def looks_like_ct(values: np.ndarray) -> bool:
    """Hounsfield units: air in the low tail (0.5th percentile <= -500), nothing below -4000 (CT padding is
    at most about -3024) and something at or above water (99.5th percentile >= 0). MR images (arbitrary
    non-negative units) and z-scored data (a few units around 0) fail it."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return False
    lo, hi = np.percentile(v, [0.5, 99.5])
    return bool(v.min() >= -4000 and lo <= -500 and hi >= 0)


def _fmt(values: Any) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def check_case(array: np.ndarray, spacing_mm: Sequence[float], guard: dict[str, Any] | None
               ) -> tuple[list[str], list[str]]:
    """``(warnings, refusals)`` for one case (channel 0 as ``array`` (z, y, x), raw intensities) against a
    bundle's ``input_guard`` (see the module doc); both empty without a guard."""
    if not guard:
        return [], []
    warnings: list[str] = []
    refusals: list[str] = []
    vals = _sample(array)
    vals = vals[np.isfinite(vals)]
    modality = str(guard.get("modality", "other"))
    trained_ct = modality.upper() == "CT"
    p = np.percentile(vals, [0.5, 1, 50, 99, 99.5]) if vals.size else np.zeros(5)
    fgp = guard.get("foreground_percentiles") or {}
    if not trained_ct and looks_like_ct(vals):
        refusals.append(f"the intensities look like CT (Hounsfield units: 0.5th percentile {p[0]:.0f}, 99.5th "
                        f"{p[4]:.0f}), but the model was trained on {modality}")
    elif trained_ct and "p0.5" in fgp and "p99.5" in fgp and (p[3] < fgp["p0.5"] or p[1] > fgp["p99.5"]):
        refusals.append(f"the intensities (1st..99th percentile {p[1]:.4g}..{p[3]:.4g}) lie wholly outside the CT "
                        f"training foreground's ({fgp['p0.5']:.4g}..{fgp['p99.5']:.4g} HU): not a CT in HU?")
    elif "p99.5" in fgp and fgp["p99.5"] > 0 and (p[4] > 20 * fgp["p99.5"] or p[4] < fgp.get("p0.5", 0)):
        warnings.append(f"intensities up to {p[4]:.4g} (99.5th percentile) are far from the training foreground's "
                        f"{fgp.get('p0.5', 0):.4g}..{fgp['p99.5']:.4g}")
    sp = np.asarray(spacing_mm, dtype=np.float64)
    fov = np.asarray(np.shape(array), dtype=np.float64) * sp
    rng_sp, rng_fov = guard.get("spacing_mm") or {}, guard.get("field_of_view_mm") or {}
    if rng_fov.get("max") and rng_fov.get("min"):
        big, small = float(np.prod(rng_fov["max"])), float(np.prod(rng_fov["min"]))
        vol = float(np.prod(fov))
        if big > 0 and vol > FOV_REFUSE_FACTOR * big:
            refusals.append(f"the field of view {_fmt(fov)} mm ({vol / 1e3:.4g} mL) is {vol / big:.0f} times the "
                            f"largest training case's ({_fmt(rng_fov['max'])} mm): another body region?")
        elif small > 0 and vol * FOV_REFUSE_FACTOR < small:
            refusals.append(f"the field of view {_fmt(fov)} mm is {small / max(vol, 1e-9):.0f} times smaller than "
                            f"the smallest training case's ({_fmt(rng_fov['min'])} mm)")
        elif np.any(fov > FAR_FACTOR * np.asarray(rng_fov["max"])) or np.any(fov < np.asarray(rng_fov["min"])
                                                                               / FAR_FACTOR):
            warnings.append(f"the field of view {_fmt(fov)} mm is far from the training range "
                            f"{_fmt(rng_fov['min'])} .. {_fmt(rng_fov['max'])} mm")
    if rng_sp.get("min") and rng_sp.get("max") and (
            np.any(sp > FAR_FACTOR * np.asarray(rng_sp["max"])) or np.any(sp < np.asarray(rng_sp["min"]) / FAR_FACTOR)):
        warnings.append(f"the spacing {_fmt(sp)} mm is far from the training range {_fmt(rng_sp['min'])} .. "
                        f"{_fmt(rng_sp['max'])} mm")
    return warnings, refusals


def merge_guards(guards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One guard for a fold ensemble: the widest spacing and field-of-view ranges of the folds, the first
    fold's modality, the foreground percentiles widened to the lowest / highest of the folds (median: mean)."""
    first = dict(guards[0])
    out = {**first, "n_cases": max(int(g.get("n_cases", 0)) for g in guards)}
    for key in ("spacing_mm", "field_of_view_mm"):
        rngs = [g.get(key) or {} for g in guards]
        if all(r.get("min") and r.get("max") for r in rngs):
            out[key] = {"min": _round(np.min([r["min"] for r in rngs], axis=0), 4),
                        "max": _round(np.max([r["max"] for r in rngs], axis=0), 4)}
    pcts = [g.get("foreground_percentiles") or {} for g in guards]
    if all("p0.5" in p and "p50" in p and "p99.5" in p for p in pcts):
        out["foreground_percentiles"] = {"p0.5": min(p["p0.5"] for p in pcts),
                                         "p50": round(float(np.mean([p["p50"] for p in pcts])), 4),
                                         "p99.5": max(p["p99.5"] for p in pcts)}
    return out
