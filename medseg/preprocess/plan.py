"""Preprocessing plans: propose one from a fingerprint, apply it to a case, and invert it.

A plan is a plain dict (saved as YAML)::

    target_spacing_mm: [z, y, x]
    crop: nonzero                     # or none
    normalization: {scheme: ct, clip: [lo, hi], mean: m, std: s}
                 | {scheme: zscore, mask_nonzero: bool}
                 | {scheme: none}
    resample: {order: cubic, label_order: linear, anisotropy_threshold: 3.0, anisotropic_order: nearest}

:func:`apply_plan` runs crop -> normalise -> resample (nnU-Net's order) and returns, with the
preprocessed volume(s), a YAML-safe ``info`` dict (original grid, crop box, cropped grid) that
:func:`invert_plan` uses to put a predicted label map back on the input grid exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryMismatchError
from medseg.preprocess.crop import CropBox, crop_to_foreground, crop_volume, uncrop
from medseg.preprocess.grid import Grid, grid_of
from medseg.preprocess.normalize import clip_zscore, zscore
from medseg.preprocess.resample import resample_to_grid, resample_to_spacing
from medseg.volume import Volume

ANISO_THRESHOLD = 3.0


def target_spacing(fp: dict[str, Any]) -> tuple[list[float], int | None]:
    """Median spacing; for strongly anisotropic data the low-resolution axis takes the 10th
    percentile of its spacings instead (never finer than the other axes), as nnU-Net does."""
    target = np.asarray(fp["median_spacing_mm"], dtype=np.float64)
    shape = np.asarray(fp["median_shape"], dtype=np.float64)
    worst = int(np.argmax(target))
    others = [k for k in range(3) if k != worst]
    # in the target frame the low-res axis also has few voxels (both criteria, as nnU-Net)
    shape_t = shape * np.asarray(fp["median_spacing_mm"]) / target
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[others])
    aniso_voxels = shape_t[worst] * ANISO_THRESHOLD < min(shape_t[others])
    if aniso_spacing and aniso_voxels:
        p10 = float(fp["spacing_percentile10_mm"][worst])
        target[worst] = max(p10, float(max(target[others]))) + 1e-5
        return target.tolist(), worst
    return target.tolist(), None


def propose_plan(fp: dict[str, Any], *, modality: str | None = None) -> dict[str, Any]:
    """Preprocessing parameters for the data set described by ``fp`` (see :func:`fingerprint`).

    CT (``modality`` or the fingerprint's guess): clip to the foreground 0.5/99.5 percentiles,
    then z-score with the foreground mean/std of the whole data set. Other modalities: z-score
    per case, inside the non-zero mask when cropping to non-zero removes more than a quarter of
    the volume (nnU-Net's rule). Images: cubic in-plane, labels: per-label linear.
    """
    mod = (modality or fp.get("modality_guess") or "other")
    target, aniso = target_spacing(fp)
    fi = fp.get("foreground_intensity", {})
    if mod.upper() == "CT":
        if "p0.5" not in fi:
            raise ConfigError("propose_plan: CT normalisation needs foreground intensity statistics "
                              "(the fingerprint has no foreground samples)")
        norm: dict[str, Any] = {"scheme": "ct", "clip": [fi["p0.5"], fi["p99.5"]], "mean": fi["mean"],
                                "std": max(fi["std"], 1e-8)}
    else:
        norm = {"scheme": "zscore", "mask_nonzero": bool(fp.get("median_nonzero_crop_fraction", 1.0) < 0.75)}
    spacing_ratio = np.asarray(fp["median_spacing_mm"]) / np.asarray(target)
    return {
        "modality": "CT" if mod.upper() == "CT" else "other",
        "target_spacing_mm": [float(round(t, 6)) for t in target],
        "anisotropic_axis": aniso,
        "crop": "nonzero",
        "normalization": norm,
        "resample": {"order": "cubic", "label_order": "linear", "anisotropy_threshold": ANISO_THRESHOLD,
                     "anisotropic_order": "nearest"},
        "median_shape_after_resampling": np.round(np.asarray(fp["median_shape"]) * spacing_ratio).tolist(),
    }


def normalize_with_plan(vol: Volume, norm: dict[str, Any]) -> Volume:
    scheme = norm.get("scheme", "none")
    if scheme == "ct":
        return clip_zscore(vol, clip=tuple(norm["clip"]), mean=float(norm["mean"]), std=float(norm["std"]))
    if scheme == "zscore":
        return zscore(vol, mask_nonzero=bool(norm.get("mask_nonzero", False)))
    if scheme == "none":
        return vol.with_array(vol.array.astype(np.float32))
    raise ConfigError(f"plan: unknown normalization scheme '{scheme}' (use ct, zscore or none)")


@dataclass
class Preprocessed:
    """Result of :func:`apply_plan`: image, optional label, and ``info`` for :func:`invert_plan`."""

    image: Volume
    label: Volume | None
    info: dict[str, Any]


def apply_plan(vol: Volume, plan: dict[str, Any], *, label: Volume | None = None) -> Preprocessed:
    """Crop -> normalise -> resample ``vol`` (and ``label``, cropped with the image's box)."""
    if label is not None:
        why = label.grid_mismatch(vol, tol_mm=1e-3)
        if why:
            raise GeometryMismatchError(f"label is not on the image grid ({why})", path=label.meta.get("path"))
        if not label.is_label:
            label = label.with_array(label.array, is_label=True)
    original = grid_of(vol)
    crop = plan.get("crop", "nonzero")
    if crop == "nonzero":
        img, box = crop_to_foreground(vol)
    elif crop in (None, "none"):
        img, box = vol, CropBox((0, 0, 0), vol.shape, vol.shape)
    else:
        raise ConfigError(f"plan: unknown crop '{crop}' (use nonzero or none)")
    lab = crop_volume(label, box) if label is not None else None
    cropped = grid_of(img)
    img = normalize_with_plan(img, plan.get("normalization", {"scheme": "none"}))
    rs = dict(plan.get("resample", {}))
    spacing = plan.get("target_spacing_mm")
    if spacing is not None:
        img = resample_to_spacing(img, spacing, **rs)
        if lab is not None:
            lab = resample_to_spacing(lab, spacing, **rs)
    info = {"original_grid": original.to_dict(), "crop_box": box.to_dict(), "cropped_grid": cropped.to_dict(),
            "preprocessed_grid": grid_of(img).to_dict()}
    return Preprocessed(img, lab, info)


def invert_plan(pred: Volume, info: dict[str, Any], *, label_order: str = "nearest") -> Volume:
    """Put a label map predicted on the preprocessed grid back on the original input grid.

    Resamples onto the cropped grid (exact in physical space), then pads with background to the
    full input grid. ``pred`` must be on ``info["preprocessed_grid"]``.
    """
    pre = Grid.from_dict(info["preprocessed_grid"])
    if pred.shape != pre.shape:
        raise GeometryMismatchError(f"prediction shape {pred.shape} is not the preprocessed shape {pre.shape}",
                                    path=pred.meta.get("path"))
    lab = pred if pred.is_label else pred.with_array(pred.array, is_label=True)
    cropped = Grid.from_dict(info["cropped_grid"])
    on_crop = resample_to_grid(lab, cropped, label_order=label_order)
    box = CropBox.from_dict(info["crop_box"])
    full = uncrop(on_crop, box)
    original = Grid.from_dict(info["original_grid"])
    return Volume(full.array, original.spacing_mm, original.origin_mm, original.direction, is_label=True,
                  meta=dict(pred.meta))
