"""Intensity normalisation: z-score, percentile min-max, CT windows, CT clip + z-score. Float32 output.

Every scheme has an array form (``*_array``) that does the work and a Volume form. A
preprocessing plan (:mod:`medseg.preprocess.plan`) names its normalisation as a *method*, applied
by :func:`normalize_array` (one channel) or :func:`normalize_channels` (C, z, y, x): a scheme name,
or a mapping ``{scheme: NAME, **parameters}`` (a name alone is the scheme with its defaults); a list
gives one method per channel:

==================  ===========================================  ==================================
scheme              parameters                                   result
==================  ===========================================  ==================================
``zscore``          ``mask_nonzero: false``                      per-case z-score; with the mask,
                                                                 statistics over the non-zero voxels
                                                                 and zeros stay 0
``zscore_nonzero``  (none)                                       ``zscore`` with ``mask_nonzero: true``
``ct``              ``clip: [lo, hi], mean, std`` (required)     clip, then ``(x - mean) / std``
                                                                 (data-set statistics, nnU-Net's CT)
``minmax``          ``lower_percentile: 0.5, upper_percentile:   clip to the case's percentiles,
                    99.5``                                       scale to [0, 1]
``ct_window``       ``preset`` or ``center`` and ``width`` (HU)  clip to the window, scale to [0, 1]
``none``            (none)                                       float32 copy
==================  ===========================================  ==================================

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


def _mask_array(vol: Volume, mask: np.ndarray | Volume | None) -> np.ndarray | None:
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


#: above this many values, :func:`mean_std` works in chunks of this size (float64 copies of one chunk at a time)
STATS_CHUNK = 1 << 22


def mean_std(vals: np.ndarray, *, chunk: int = STATS_CHUNK) -> tuple[float, float]:
    """Mean and (population) standard deviation of ``vals`` in float64.

    Up to ``chunk`` values: numpy's ``mean()`` and ``std()`` of a float64 copy. Beyond, chunk by chunk
    (two passes: the sum, then the sum of squared deviations from the mean), so a CT-sized volume needs
    no float64 copies of its size (two of them: 8 bytes a voxel each); the results differ from the
    one-piece ones in the last bits of the float64 only (summation order), below the float32 rounding
    z-scoring applies them with.

    >>> mean_std(np.array([1.0, 2.0, 3.0, 4.0]), chunk=3)
    (2.5, 1.118033988749895)
    """
    flat = np.reshape(np.asarray(vals), -1)
    if flat.size <= chunk:
        v64 = flat.astype(np.float64, copy=False)
        return float(v64.mean()), float(v64.std())
    n = flat.size
    total = 0.0
    for i in range(0, n, chunk):
        total += float(np.sum(flat[i:i + chunk], dtype=np.float64))
    mean = total / n
    sq = 0.0
    for i in range(0, n, chunk):
        d = flat[i:i + chunk].astype(np.float64)
        d -= mean
        sq += float(np.dot(d, d))
    return mean, float(np.sqrt(sq / n))


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
    mean, std = mean_std(vals)
    out = a.astype(np.float32)
    out -= np.float32(mean)
    if std >= eps:
        out /= np.float32(std)
    return out


def zscore(vol: Volume, *, mask: np.ndarray | Volume | None = None, mask_nonzero: bool = False) -> Volume:
    """Z-score normalisation; statistics inside ``mask`` (or the non-zero voxels if
    ``mask_nonzero``), applied to every voxel. With a mask, voxels outside it are set to 0
    (nnU-Net's behaviour for ``use_mask_for_norm``)."""
    _image_only(vol, "zscore")
    m = _mask_array(vol, mask)
    if m is None and mask_nonzero:
        m = vol.array != 0
    return vol.with_array(_zscore_masked(vol.array, m))


def _zscore_masked(a: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """z-score with statistics over ``m``; voxels outside ``m`` set to 0 (all 0 when ``m`` is empty)."""
    if m is not None and not m.any():
        return np.zeros(np.shape(a), dtype=np.float32)
    out = zscore_array(a, mask=m)
    if m is not None:
        out[~m] = 0.0
    return out


def minmax(vol: Volume, *, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> Volume:
    """Clip to the given percentiles of the volume, then scale linearly to [0, 1] (float32)."""
    _image_only(vol, "minmax")
    return vol.with_array(minmax_array(vol.array, lower_percentile=lower_percentile,
                                       upper_percentile=upper_percentile))


def minmax_array(a: np.ndarray, *, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> np.ndarray:
    """The array form of :func:`minmax`."""
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise ValueError(f"need 0 <= lower_percentile < upper_percentile <= 100, got "
                         f"{lower_percentile}, {upper_percentile}")
    lo, hi = np.percentile(a, [lower_percentile, upper_percentile])
    return _scale(a, float(lo), float(hi))


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.asarray(a).astype(np.float32)
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
    return vol.with_array(ct_window_array(vol.array, preset=preset, center=center, width=width))


def ct_window_array(a: np.ndarray, *, preset: str | None = None, center: float | None = None,
                    width: float | None = None) -> np.ndarray:
    """The array form of :func:`ct_window`."""
    center, width = _window(preset, center, width)
    return _scale(a, center - width / 2.0, center + width / 2.0)


def _window(preset: str | None, center: float | None, width: float | None) -> tuple[float, float]:
    if preset is not None:
        if center is not None or width is not None:
            raise ValueError("ct_window: give either preset or center/width, not both")
        key = str(preset).lower()
        if key not in CT_WINDOWS:
            raise ValueError(f"unknown CT window preset '{preset}' (known: {', '.join(CT_WINDOWS)})")
        center, width = CT_WINDOWS[key]
    if center is None or width is None:
        raise ValueError("ct_window: give a preset or both center and width (HU)")
    if width <= 0:
        raise ValueError(f"ct_window: width must be positive, got {width}")
    return float(center), float(width)


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


# ---------------------------------------------------------------- plan methods
#: scheme -> (required parameters, optional parameters)
SCHEMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "zscore": ((), ("mask_nonzero",)),
    "zscore_nonzero": ((), ()),
    "ct": (("clip", "mean", "std"), ()),
    "minmax": ((), ("lower_percentile", "upper_percentile")),
    "ct_window": ((), ("preset", "center", "width")),
    "none": ((), ()),
}


def method_spec(method) -> dict:
    """The mapping form ``{scheme: NAME, **parameters}`` of a normalisation method, checked.

    Raises ValueError naming what is wrong (unknown scheme or parameter, missing or bad value).

    >>> method_spec("zscore_nonzero")
    {'scheme': 'zscore_nonzero'}
    >>> method_spec({"scheme": "ct", "clip": [-100, 300], "mean": 80, "std": 50})["clip"]
    [-100, 300]
    """
    if isinstance(method, str):
        spec: dict = {"scheme": method}
    elif isinstance(method, dict):
        spec = dict(method)
    else:
        raise ValueError(f"a normalisation method is a scheme name or a mapping with 'scheme', got {method!r}")
    scheme = spec.get("scheme")
    if scheme not in SCHEMES:
        raise ValueError(f"normalisation {method!r}: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    required, optional = SCHEMES[scheme]
    missing = [k for k in required if k not in spec]
    extra = sorted(set(spec) - {"scheme", *required, *optional})
    if missing or extra:
        raise ValueError(f"normalisation {method!r}: scheme {scheme} "
                         + (f"needs {', '.join(required)}" if missing else f"takes no {', '.join(extra)}"))

    def number(k: str) -> bool:
        return isinstance(spec[k], (int, float)) and not isinstance(spec[k], bool) and bool(np.isfinite(spec[k]))

    if scheme == "ct":
        clip = spec["clip"]
        ok = (isinstance(clip, (list, tuple)) and len(clip) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in clip) and clip[0] < clip[1]
              and number("mean") and number("std") and spec["std"] > 0)
        if not ok:
            raise ValueError(f"normalisation {method!r}: ct needs clip: [low, high] with low < high, a mean and "
                             "std > 0")
    elif scheme == "zscore" and not isinstance(spec.get("mask_nonzero", False), bool):
        raise ValueError(f"normalisation {method!r}: mask_nonzero must be true or false")
    elif scheme == "minmax":
        lo, hi = spec.get("lower_percentile", 0.5), spec.get("upper_percentile", 99.5)
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo < hi <= 100):
            raise ValueError(f"normalisation {method!r}: need 0 <= lower_percentile < upper_percentile <= 100")
    elif scheme == "ct_window":
        _window(spec.get("preset"), spec.get("center"), spec.get("width"))
    return spec


def channel_methods(method, channels: int) -> list:
    """One normalisation method per channel: a single method (name or mapping) applies to every
    channel; a list gives one per channel (``medseg plan`` writes one per modality)."""
    if isinstance(method, (list, tuple)):
        if len(method) != channels:
            raise ValueError(f"normalization lists {len(method)} methods for {channels} channel(s)")
        return list(method)
    return [method] * channels


def normalize_array(a: np.ndarray, method) -> np.ndarray:
    """Apply one normalisation method (see the module doc) to one channel; float32 result.

    >>> normalize_array(np.array([0.0, 0.0, 1.0, 3.0]), "zscore_nonzero").tolist()
    [0.0, 0.0, -1.0, 1.0]
    """
    spec = method_spec(method)
    scheme = spec["scheme"]
    if scheme in ("zscore", "zscore_nonzero"):
        masked = scheme == "zscore_nonzero" or spec.get("mask_nonzero", False)
        return _zscore_masked(a, np.asarray(a) != 0 if masked else None)
    if scheme == "ct":
        return clip_zscore_array(a, clip=spec["clip"], mean=float(spec["mean"]), std=float(spec["std"]))
    if scheme == "minmax":
        return minmax_array(a, lower_percentile=spec.get("lower_percentile", 0.5),
                            upper_percentile=spec.get("upper_percentile", 99.5))
    if scheme == "ct_window":
        return ct_window_array(a, preset=spec.get("preset"), center=spec.get("center"), width=spec.get("width"))
    return np.asarray(a).astype(np.float32)


def normalize_channels(image: np.ndarray, method) -> np.ndarray:
    """Normalise ``image`` (C, z, y, x) channel by channel (``method`` or one method per channel) -> float32."""
    methods = channel_methods(method, np.shape(image)[0])
    if len(methods) == 1:   # one channel: its result is the output (no second copy of the volume)
        return np.asarray(normalize_array(image[0], methods[0]), dtype=np.float32)[None]
    out = np.empty(np.shape(image), dtype=np.float32)
    for c, m in enumerate(methods):
        out[c] = normalize_array(image[c], m)
    return out
