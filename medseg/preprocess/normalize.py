"""Intensity normalisation: z-score, percentile min-max, CT windows. Float32 output.

CT window presets (level/centre and width in HU) are the usual radiology values, e.g. as listed
by Radiopaedia ("Windowing (CT)"): brain L40/W80, soft tissue/abdomen L50/W400, liver L30/W150,
mediastinum L50/W350, lung L-600/W1500, bone L400/W1800.
"""

from __future__ import annotations

import logging

import numpy as np

from medseg.errors import GeometryMismatchError
from medseg.volume import Volume

log = logging.getLogger("medseg.preprocess.normalize")

CT_WINDOWS: dict[str, tuple[float, float]] = {  # name -> (center/level HU, width HU)
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def _image_only(vol: Volume, what: str) -> None:
    if vol.is_label:
        raise ValueError(f"{what} normalises intensities; not meant for label volumes "
                         f"({vol.meta.get('path', 'volume')})")


def _mask_array(vol: Volume, mask: "np.ndarray | Volume | None") -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, Volume):
        why = mask.grid_mismatch(vol)
        if why:
            raise GeometryMismatchError(f"normalisation mask is on another grid: {why}", path=mask.meta.get("path"))
        mask = mask.array
    m = np.asarray(mask) != 0
    if m.shape != vol.shape:
        raise GeometryMismatchError(f"normalisation mask shape {m.shape} differs from volume {vol.shape}",
                                    path=vol.meta.get("path"))
    return m


def zscore_array(a: np.ndarray, *, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """``(a - mean) / std`` with mean/std over ``mask`` (all voxels if None); float32.

    A constant region (std < eps) gives zeros after centring instead of dividing by ~0.

    >>> [round(float(v), 4) for v in zscore_array(np.array([1.0, 2.0, 3.0]))]
    [-1.2247, 0.0, 1.2247]
    """
    vals = a[mask] if mask is not None else a
    if vals.size == 0:
        log.warning("z-score mask is empty; using all voxels")
        vals = a
    v64 = vals.astype(np.float64, copy=False)
    mean = float(v64.mean())
    std = float(v64.std())
    out = a.astype(np.float32)
    out -= np.float32(mean)
    if std >= eps:
        out /= np.float32(std)
    return out


def zscore(vol: Volume, *, mask: "np.ndarray | Volume | None" = None, mask_nonzero: bool = False) -> Volume:
    """Z-score normalisation; statistics inside ``mask`` (or the non-zero voxels if
    ``mask_nonzero``), applied to every voxel. With a mask, voxels outside it are set to 0
    (nnU-Net's behaviour for ``use_mask_for_norm``)."""
    _image_only(vol, "zscore")
    m = _mask_array(vol, mask)
    if m is None and mask_nonzero:
        m = vol.array != 0
    out = zscore_array(vol.array, mask=m)
    if m is not None:
        out[~m] = 0.0
    return vol.with_array(out)


def minmax(vol: Volume, *, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> Volume:
    """Clip to the given percentiles of the volume, then scale linearly to [0, 1] (float32)."""
    _image_only(vol, "minmax")
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise ValueError(f"need 0 <= lower_percentile < upper_percentile <= 100, got "
                         f"{lower_percentile}, {upper_percentile}")
    lo, hi = np.percentile(vol.array, [lower_percentile, upper_percentile])
    return vol.with_array(_scale(vol.array, float(lo), float(hi)))


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = a.astype(np.float32)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(lo)
    if hi > lo:
        out /= np.float32(hi - lo)
    return out


def ct_window(vol: Volume, *, preset: str | None = None, center: float | None = None,
              width: float | None = None) -> Volume:
    """Clip HU to ``[center - width/2, center + width/2]`` and scale to [0, 1] (float32).

    Give ``preset`` (one of :data:`CT_WINDOWS`) or both ``center`` and ``width``.

    >>> v = Volume(np.array([-1000, 0, 50, 250, 3000], np.int16).reshape(1, 1, 5))
    >>> ct_window(v, preset="abdomen").array.ravel().round(3).tolist()
    [0.0, 0.375, 0.5, 1.0, 1.0]
    """
    _image_only(vol, "ct_window")
    if preset is not None:
        if center is not None or width is not None:
            raise ValueError("ct_window: give either preset or center/width, not both")
        key = preset.lower()
        if key not in CT_WINDOWS:
            raise ValueError(f"unknown CT window preset '{preset}' (known: {', '.join(CT_WINDOWS)})")
        center, width = CT_WINDOWS[key]
    if center is None or width is None:
        raise ValueError("ct_window: give a preset or both center and width (HU)")
    if width <= 0:
        raise ValueError(f"ct_window: width must be positive, got {width}")
    return vol.with_array(_scale(vol.array, center - width / 2.0, center + width / 2.0))


def clip_zscore(vol: Volume, *, clip: tuple[float, float], mean: float, std: float) -> Volume:
    """nnU-Net-style CT normalisation with data-set statistics: clip, subtract ``mean``, divide by ``std``."""
    _image_only(vol, "clip_zscore")
    return vol.with_array(clip_zscore_array(vol.array, clip=clip, mean=mean, std=std))


def clip_zscore_array(a: np.ndarray, *, clip, mean: float, std: float) -> np.ndarray:
    """The array form of :func:`clip_zscore` (float32 copy): clip to ``clip``, then ``(x - mean) / std``."""
    lo, hi = float(clip[0]), float(clip[1])
    if not hi >= lo:
        raise ValueError(f"clip must be (low, high) with low <= high, got {clip}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    out = np.asarray(a).astype(np.float32)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out
