"""Tissue detection on a low-resolution image of a slide.

Brightfield (H&E): Otsu threshold on HSV saturation, tissue is coloured, glass is grey/white.
Fluorescence: Otsu threshold on the log of smoothed intensity (max over channels), tissue is
bright on black.
``mode="auto"`` picks fluorescence when the image is mostly dark. The raw mask is cleaned with a
morphological opening and closing (radii in um), connected components smaller than
``min_area_mm2`` are dropped, and holes are kept (lumen and fat are not tissue).

>>> import numpy as np
>>> img = np.full((40, 40, 3), 240, np.uint8); img[10:30, 10:30] = (180, 60, 150)
>>> m = tissue_mask(img, mpp=16.0, min_area_mm2=0.0)
>>> int(m.sum())  # the 20 x 20 square, its 4 corner pixels rounded off
396
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["otsu_threshold", "tissue_mask", "detect_mode", "saturation"]

# A threshold below these means the image holds (almost) no signal: no tissue, not noise.
MIN_SATURATION = 0.05
MIN_INTENSITY = 4.0


def otsu_threshold(values: np.ndarray, *, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the bin edge maximising between-class variance.

    Pixels ``> threshold`` form the upper class (like SimpleITK's OtsuThreshold with 256 bins).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    return float(edges[k + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an RGB uint8 image ``(H, W, 3)``."""
    a = rgb.astype(np.float32)
    mx, mn = a.max(2), a.min(2)
    return np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)


def detect_mode(rgb: np.ndarray) -> str:
    """``'fluorescence'`` when the median pixel is dark (black background), else ``'brightfield'``."""
    return "fluorescence" if float(np.median(rgb.max(2))) < 80 else "brightfield"


def _disk(radius_px: int) -> np.ndarray:
    r = int(radius_px)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy) <= r * r


def tissue_mask(rgb: np.ndarray, *, mpp: float, mode: str = "auto", min_area_mm2: float = 0.01,
                open_um: float = 16.0, close_um: float = 32.0) -> np.ndarray:
    """Boolean tissue mask ``(H, W)`` of an RGB uint8 image ``(H, W, 3)`` at ``mpp`` um/px.

    Parameters
    ----------
    mode : ``'brightfield'``, ``'fluorescence'`` or ``'auto'``.
    min_area_mm2 : connected tissue pieces smaller than this are removed.
    open_um, close_um : radii of the morphological opening (specks) and closing (gaps), in um;
        radii below one pixel at ``mpp`` are skipped.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs an (H, W, 3) RGB image, got {rgb.shape}")
    rgb = rgb[..., :3]
    if mode == "auto":
        mode = detect_mode(rgb)
    if mode == "brightfield":
        sat = ndi.median_filter(saturation(rgb), size=3)
        t = otsu_threshold(sat)
        mask = sat > t if t >= MIN_SATURATION else sat > max(t, 2 * MIN_SATURATION)
    elif mode == "fluorescence":
        # Nuclear/membrane signal is sparse: smooth it into a tissue density, then split dark
        # glass from tissue on a log scale (signal spans decades between channels and stains).
        inten = ndi.gaussian_filter(rgb.max(2).astype(np.float32), sigma=max(1.0, 16.0 / mpp))
        t = float(np.expm1(otsu_threshold(np.log1p(inten))))
        mask = inten > max(t, MIN_INTENSITY)
    else:
        raise ValueError(f"mode must be 'auto', 'brightfield' or 'fluorescence', got {mode!r}")
    r_open, r_close = int(round(open_um / mpp)), int(round(close_um / mpp))
    if r_open >= 1:
        mask = ndi.binary_opening(mask, structure=_disk(r_open))
    if r_close >= 1:
        # pad so closing does not eat tissue touching the border
        pad = r_close + 1
        mask = ndi.binary_closing(np.pad(mask, pad), structure=_disk(r_close))[pad:-pad, pad:-pad]
    if min_area_mm2 > 0 and mask.any():
        lab, n = ndi.label(mask)
        areas_mm2 = np.bincount(lab.ravel())[1:] * (mpp * mpp) / 1e6
        keep = np.concatenate([[False], areas_mm2 >= min_area_mm2])
        mask = keep[lab]
    return mask.astype(bool)


def area_mm2(mask: np.ndarray, *, mpp: float) -> float:
    """Area of the true pixels of ``mask`` at ``mpp`` um/px, in mm^2."""
    return float(mask.sum()) * mpp * mpp / 1e6
