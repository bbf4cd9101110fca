"""Preprocessing plans: the one format, applied to a case by training and inference alike, and inverted.

A plan is a plain dict (YAML in ``bundle.yaml`` under ``plan:``, in the configurations of a
``medseg plan`` file, or written by ``medseg fingerprint``)::

    spacing_mm: [z, y, x]          # target spacing; null: every case keeps its own
    normalization: zscore          # a method of medseg.preprocess.normalize, or one per channel:
                                   #   zscore | zscore_nonzero | none | {scheme: ct, clip: [lo, hi], mean, std}
                                   #   | {scheme: zscore, mask_nonzero: true} | {scheme: minmax, ...} | [..., ...]
    crop: none                     # or nonzero: cut to the box of the non-zero voxels first
    resample: {order: cubic, label_order: nearest, anisotropy_threshold: 3.0,
               anisotropic_order: nearest, tolerance: 0.01}
    normalize_before_resample: false

Only ``spacing_mm`` and ``normalization`` are required; the other keys default to the values
shown (the training defaults), and other keys (``patch_size``, ``divisor``, ``median_shape`` of a
trained model, ``modality`` ...) are carried along untouched. :func:`apply_plan_arrays` runs:

1. ``crop: nonzero``: cut every channel to the box of the voxels that are non-zero in any channel;
2. resample to ``spacing_mm`` with :func:`medseg.preprocess.resample.resample_array` (image
   ``resample.order``, label ``resample.label_order``; strongly anisotropic data: the low-resolution
   axis with ``anisotropic_order``), unless every axis is within ``tolerance`` (relative) of it;
3. normalise each channel (:func:`medseg.preprocess.normalize.normalize_channels`) -- before
   step 2 instead when ``normalize_before_resample`` (nnU-Net's order).

The result (:class:`Prepared`) keeps the grids and the crop box, so predictions come back onto the
input grid exactly (:func:`to_input_grid`, :func:`labels_to_input_grid`; :func:`invert_plan` for
Volumes).

Older form, still read (:func:`read_plan` converts it): the first preprocessing plans of this
module (``medseg fingerprint`` before the merge) named the spacing ``target_spacing_mm`` and
defaulted to ``crop: nonzero``, linear image interpolation, resampling whatever the spacing and
normalising before resampling; read with those defaults, they preprocess exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryMismatchError
from medseg.preprocess.crop import CropBox, foreground_box
from medseg.preprocess.grid import Grid, grid_of, index_grid, spacing_grid
from medseg.preprocess.interp import KERNELS
from medseg.preprocess.normalize import channel_methods, method_spec, normalize_channels
from medseg.preprocess.resample import LABEL_ORDERS, resample_array
from medseg.volume import Volume

log = logging.getLogger("medseg.preprocess.plan")

ANISO_THRESHOLD = 3.0
#: axes within this relative difference of the plan spacing are not resampled (the training rule)
SAME_SPACING_RTOL = 0.01
RESAMPLE_DEFAULTS: dict[str, Any] = {"order": "cubic", "label_order": "nearest",
                                     "anisotropy_threshold": ANISO_THRESHOLD, "anisotropic_order": "nearest",
                                     "tolerance": SAME_SPACING_RTOL}
CROPS = ("none", "nonzero")


# ----------------------------------------------------------------------------- the format
def read_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan with every preprocessing key present and checked (the older form converted).

    Raises ConfigError naming the bad key.

    >>> p = read_plan({"spacing_mm": [1, 1, 1], "normalization": "zscore", "patch_size": [8, 8, 8]})
    >>> p["crop"], p["resample"]["order"], p["normalize_before_resample"], p["patch_size"]
    ('none', 'cubic', False, [8, 8, 8])
    >>> read_plan({"target_spacing_mm": [1, 1, 1]})["spacing_mm"]
    [1.0, 1.0, 1.0]
    """
    if not isinstance(plan, dict):
        raise ConfigError(f"a preprocessing plan is a mapping, got {type(plan).__name__}")
    if "spacing_mm" in plan:
        p = dict(plan)
        p.setdefault("crop", "none")
        p.setdefault("normalize_before_resample", False)
        resample = {**RESAMPLE_DEFAULTS, **(p.get("resample") or {})}
    else:  # the older medseg.preprocess form
        p = {k: v for k, v in plan.items() if k != "target_spacing_mm"}
        p["spacing_mm"] = plan.get("target_spacing_mm")
        p.setdefault("crop", "nonzero")
        p.setdefault("normalization", "none")
        p["normalize_before_resample"] = True
        old = {k: v for k, v in (plan.get("resample") or {}).items() if k not in ("fill", "threads")}  # no effect
        resample = {**RESAMPLE_DEFAULTS, "order": "linear", "tolerance": 0.0, **old}
    if "normalization" not in p:
        raise ConfigError("plan: no 'normalization' (e.g. zscore)")
    if p["spacing_mm"] is not None:
        sp = np.asarray(p["spacing_mm"], dtype=np.float64).reshape(-1)
        if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ConfigError(f"plan.spacing_mm {p['spacing_mm']!r} is not three positive numbers (z, y, x) mm")
        p["spacing_mm"] = [float(s) for s in sp]
    if p["crop"] is None:
        p["crop"] = "none"
    if p["crop"] not in CROPS:
        raise ConfigError(f"plan: unknown crop '{p['crop']}' (use nonzero or none)")
    if not isinstance(p["normalize_before_resample"], bool):
        raise ConfigError("plan.normalize_before_resample must be true or false")
    unknown = sorted(set(resample) - set(RESAMPLE_DEFAULTS))
    if unknown:
        raise ConfigError(f"plan.resample: unknown key(s) {', '.join(unknown)} (known: {', '.join(RESAMPLE_DEFAULTS)})")
    for key, allowed in (("order", KERNELS), ("label_order", LABEL_ORDERS),
                         ("anisotropic_order", ("nearest", "linear"))):
        if resample[key] not in allowed:
            raise ConfigError(f"plan.resample.{key} must be one of {', '.join(allowed)}, got {resample[key]!r}")
    p["resample"] = resample
    methods = p["normalization"] if isinstance(p["normalization"], (list, tuple)) else [p["normalization"]]
    for m in methods:
        try:
            method_spec(m)
        except ValueError as exc:
            raise ConfigError(f"plan.normalization: {exc}") from None
    return p


def plan_spacing(plan: dict[str, Any]) -> tuple[float, ...] | None:
    """The spacing (z, y, x) mm a plan resamples to (either form, unchecked), or None when it keeps
    the input spacing."""
    sp = plan["spacing_mm"] if "spacing_mm" in plan else plan.get("target_spacing_mm")
    return None if sp is None else tuple(float(s) for s in sp)


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


def normalization_for(modality: str, fp: dict[str, Any], *, digits: int | None = 4) -> dict[str, Any] | str:
    """Normalisation of one channel from its fingerprint (``foreground_intensity``,
    ``median_nonzero_crop_fraction``), as a method for :func:`medseg.preprocess.normalize.method_spec`.

    CT clips to the data set's foreground 0.5-99.5 percentiles and z-scores with its foreground
    mean/std (rounded to ``digits``; None: as measured); other modalities z-score per case, inside
    the non-zero mask (``"zscore_nonzero"``) when cropping to non-zero keeps less than 3/4 of the
    median volume (nnU-Net's rule), else ``"zscore"``.

    >>> normalization_for("MR", {"median_nonzero_crop_fraction": 0.5})
    'zscore_nonzero'
    """
    if str(modality).upper() == "CT":
        fi = fp.get("foreground_intensity", {})
        if "p0.5" not in fi:
            raise ConfigError("CT normalisation needs foreground intensity statistics (the fingerprint has no "
                              "foreground samples: no labelled voxels found)")

        def r(v: float) -> float:
            return v if digits is None else round(v, digits)

        return {"scheme": "ct", "clip": [r(fi["p0.5"]), r(fi["p99.5"])], "mean": r(fi["mean"]),
                "std": r(max(fi["std"], 1e-8))}
    return "zscore_nonzero" if float(fp.get("median_nonzero_crop_fraction", 1.0)) < 0.75 else "zscore"


def propose_plan(fp: dict[str, Any], *, modality: str | None = None) -> dict[str, Any]:
    """Preprocessing plan for the data set described by ``fp`` (see :func:`fingerprint`).

    CT (``modality`` or the fingerprint's guess): clip to the foreground 0.5/99.5 percentiles,
    then z-score with the foreground mean/std of the whole data set. Other modalities: z-score
    per case, inside the non-zero mask when cropping to non-zero removes more than a quarter of
    the volume (nnU-Net's rule). Crop to non-zero, normalise, then resample (nnU-Net's order);
    images: cubic in-plane, labels: per-label linear.
    """
    mod = (modality or fp.get("modality_guess") or "other")
    target, aniso = target_spacing(fp)
    norm = normalization_for(mod, fp, digits=None)
    if isinstance(norm, str):  # this format writes z-scoring as a mapping
        norm = {"scheme": "zscore", "mask_nonzero": norm == "zscore_nonzero"}
    spacing_ratio = np.asarray(fp["median_spacing_mm"]) / np.asarray(target)
    return {
        "modality": "CT" if mod.upper() == "CT" else "other",
        "spacing_mm": [float(round(t, 6)) for t in target],
        "anisotropic_axis": aniso,
        "crop": "nonzero",
        "normalization": norm,
        "normalize_before_resample": True,
        "resample": {"order": "cubic", "label_order": "linear", "anisotropy_threshold": ANISO_THRESHOLD,
                     "anisotropic_order": "nearest", "tolerance": 0.0},
        "median_shape_after_resampling": np.round(np.asarray(fp["median_shape"]) * spacing_ratio).tolist(),
    }


# ----------------------------------------------------------------------------- applying it
@dataclass
class Prepared:
    """A case preprocessed by a plan.

    ``image``: (C, z', y', x') float32, normalised. ``grid``: the grid of ``image``. ``crop``:
    the box of the input cut out before resampling (None: the whole input). ``cropped``: the
    grid of that box on the input grid (the input grid itself without a crop). ``label``: the
    label map on ``grid`` when one was given (its dtype kept).
    """

    image: np.ndarray
    grid: Grid
    crop: CropBox | None
    cropped: Grid
    label: np.ndarray | None = None

    def to_info(self, original: Grid) -> dict[str, Any]:
        """YAML-safe form (``original``: the input grid) for :func:`invert_plan`."""
        box = self.crop or CropBox((0, 0, 0), original.shape, original.shape)
        return {"original_grid": original.to_dict(), "crop_box": box.to_dict(),
                "cropped_grid": self.cropped.to_dict(), "preprocessed_grid": self.grid.to_dict()}

    @classmethod
    def from_info(cls, info: dict[str, Any], image: np.ndarray | None = None) -> Prepared:
        """The grids and crop box of :meth:`to_info` (``image`` empty unless given)."""
        pre = Grid.from_dict(info["preprocessed_grid"])
        return cls(np.empty((0, *pre.shape), np.float32) if image is None else image, pre,
                   CropBox.from_dict(info["crop_box"]), Grid.from_dict(info["cropped_grid"]))


def resample_case(image: np.ndarray, label: np.ndarray | None, spacing_mm: Sequence[float],
                  target_mm: Sequence[float], *, order: str = "cubic", label_order: str = "nearest",
                  anisotropy_threshold: float = ANISO_THRESHOLD, anisotropic_order: str = "nearest",
                  tolerance: float = SAME_SPACING_RTOL, threads: int | None = None):
    """Resample a (C, z, y, x) image and its (z, y, x) label (or None) to ``target_mm``.

    Step 2 of :func:`apply_plan_arrays` (defaults: the training plan's cubic B-spline image,
    nearest label) with :func:`medseg.preprocess.resample.resample_array` (field of view
    preserved, output shape ``round(n * spacing / target)``). Returns the inputs themselves when
    every axis is within ``tolerance`` (relative) of the target.
    """
    sp, tg = np.asarray(spacing_mm, float), np.asarray(target_mm, float)
    if np.all(np.abs(sp / tg - 1) < tolerance):
        return image, label
    kw: dict[str, Any] = dict(anisotropy_threshold=anisotropy_threshold, anisotropic_order=anisotropic_order,
                              threads=threads)
    image = np.asarray(image)
    if image.dtype.type not in (np.float32, np.int8, np.uint8, np.int16, np.uint16, np.bool_):
        image = image.astype(np.float32)   # else resampling converts on the way, to the same values, without a copy
    img = resample_array(image, tuple(sp), tuple(tg), order=order, **kw)
    lab = None
    if label is not None:
        lab = resample_array(label, tuple(sp), tuple(tg), is_label=True, label_order=label_order, **kw)
    return img.astype(np.float32, copy=False), lab


def apply_plan_arrays(image: np.ndarray, plan: dict[str, Any], *, grid: Grid | None = None,
                      spacing_mm: Sequence[float] | None = None, label: np.ndarray | None = None,
                      threads: int | None = None) -> Prepared:
    """Apply ``plan`` (see the module doc) to one case: crop, resample, normalise.

    Parameters
    ----------
    image : (C, z, y, x) array, any dtype.
    plan : a preprocessing plan (either form, :func:`read_plan`).
    grid : the input grid (with origin and direction); or give only ``spacing_mm`` (z, y, x).
    label : (z, y, x) label map on the same grid, or None.

    Returns
    -------
    :class:`Prepared`: image float32 (C, z', y', x') and label (dtype kept) on ``grid``.
    """
    p = read_plan(plan)
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"apply_plan_arrays needs a (C, z, y, x) image, got shape {image.shape}")
    if grid is None:
        if spacing_mm is None:
            raise ValueError("apply_plan_arrays: give the input grid or its spacing")
        grid = index_grid(image.shape[1:], spacing_mm)
    if tuple(grid.shape) != tuple(image.shape[1:]) or (label is not None and tuple(label.shape) != grid.shape):
        raise GeometryMismatchError(f"image {image.shape[1:]} / label {None if label is None else label.shape} "
                                    f"are not on the grid {grid.shape}")
    box, cropped = None, grid
    if p["crop"] == "nonzero":
        fg = np.any(image != 0, axis=0)
        if not fg.any():
            log.warning("no non-zero voxels: not cropped")
        box = foreground_box(fg)
        image = image[(slice(None), *box.slices)]
        label = None if label is None else np.ascontiguousarray(label[box.slices])
        origin = np.asarray(grid.origin_mm) + box.offset_mm(grid.spacing_mm, grid.direction)
        cropped = Grid(box.shape, grid.spacing_mm, tuple(origin.tolist()), grid.direction)
    norm = p["normalization"]
    try:
        channel_methods(norm, image.shape[0])  # a list of the wrong length fails before the work
    except ValueError as exc:
        raise ConfigError(f"plan.{exc}") from None
    if p["normalize_before_resample"]:
        image = normalize_channels(np.asarray(image, dtype=np.float32), norm)
    out_grid = cropped
    if p["spacing_mm"] is not None:
        kept = image
        image, label = resample_case(image, label, cropped.spacing_mm, p["spacing_mm"], threads=threads,
                                     **p["resample"])
        if image is not kept:  # resampled (not within the tolerance)
            out_grid = spacing_grid(cropped, p["spacing_mm"])
        del kept
    if not p["normalize_before_resample"]:
        image = normalize_channels(np.asarray(image, dtype=np.float32), norm)
    lab = None if label is None else np.ascontiguousarray(label)
    return Prepared(np.ascontiguousarray(image, dtype=np.float32), out_grid, box, cropped, lab)


@dataclass
class Preprocessed:
    """Result of :func:`apply_plan`: image, optional label, and ``info`` for :func:`invert_plan`."""

    image: Volume
    label: Volume | None
    info: dict[str, Any]


def apply_plan(vol: Volume, plan: dict[str, Any], *, label: Volume | None = None) -> Preprocessed:
    """The Volume form of :func:`apply_plan_arrays` for a single-channel image (and its label)."""
    if label is not None:
        why = label.grid_mismatch(vol, tol_mm=1e-3)
        if why:
            raise GeometryMismatchError(f"label is not on the image grid ({why})", path=label.meta.get("path"))
    original = grid_of(vol)
    res = apply_plan_arrays(vol.array[None], plan, grid=original, label=None if label is None else label.array)
    g = res.grid
    img = Volume(res.image[0], g.spacing_mm, g.origin_mm, g.direction, meta=dict(vol.meta))
    lab = None if label is None else Volume(res.label, g.spacing_mm, g.origin_mm, g.direction, is_label=True,
                                            meta=dict(label.meta))
    return Preprocessed(img, lab, res.to_info(original))
