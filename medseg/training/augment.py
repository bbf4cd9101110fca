"""Patch extraction with augmentation, as plain functions on numpy arrays.

Spatial augmentation (rotation, scaling, optional elastic warp) builds the sampling coordinates of
the output patch and reads them from the whole volume in one interpolation, so nothing is cut
off at the patch border. Intensity augmentation changes the image only. Every random draw comes
from the ``rng`` passed in, so a sample is a pure function of its seed.

>>> img = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2); lab = np.zeros((2, 2, 2), np.uint8)
>>> x, y = crop_patch(img, lab, centre=(1, 1, 1), patch=(2, 2, 2))
>>> x[0, 0].tolist()
[[0.0, 1.0], [2.0, 3.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage


def crop_patch(image: np.ndarray, label: np.ndarray, *, centre: Sequence[int], patch: Sequence[int]):
    """Axis-aligned crop of ``patch`` voxels whose centre voxel is ``centre`` (start = centre - patch//2),
    zero-padded where it leaves the volume.

    image (C, z, y, x), label (z, y, x) -> (image (C, *patch), label (*patch)).
    """
    shape = label.shape
    start = [int(c) - p // 2 for c, p in zip(centre, patch)]
    src, dst = [], []
    for s, p, n in zip(start, patch, shape):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out_i = np.zeros((image.shape[0], *patch), dtype=np.float32)
    out_l = np.zeros(tuple(patch), dtype=np.uint8)
    out_i[(slice(None), *dst)] = image[(slice(None), *src)]
    out_l[tuple(dst)] = label[tuple(src)]
    return out_i, out_l


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """3x3 rotation: about array axis 0, then 1, then 2 (angles in radians)."""
    a, b, c = angles_rad
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def warped_patch(image: np.ndarray, label: np.ndarray, *, centre: Sequence[float], patch: Sequence[int],
                 matrix: np.ndarray, displacement: np.ndarray | None = None):
    """Sample a ``patch`` from the volume through ``matrix`` (3x3, output offsets -> input offsets).

    Input position of output voxel ``o`` = ``centre + matrix @ (o - patch//2) [+ displacement[:, o]]``.
    Image: linear interpolation, 0 outside. Label: nearest neighbour, 0 outside.
    """
    grid = np.indices(patch, dtype=np.float32).reshape(3, -1)
    grid -= np.array([p // 2 for p in patch], dtype=np.float32)[:, None]
    coords = (matrix.astype(np.float32) @ grid) + np.asarray(centre, dtype=np.float32)[:, None]
    if displacement is not None:
        coords += displacement.reshape(3, -1)
    coords = coords.reshape(3, *patch)
    out_i = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0, prefilter=False)
                      for ch in image]).astype(np.float32, copy=False)
    out_l = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
    return out_i, out_l.astype(np.uint8, copy=False)


def elastic_displacement(patch: Sequence[int], *, sigma_vox: float, alpha_vox: float, rng) -> np.ndarray:
    """Smooth random displacement field (3, *patch) in voxels, RMS about ``alpha_vox``."""
    coarse = [max(2, int(np.ceil(p / max(sigma_vox, 1.0)))) for p in patch]
    out = np.empty((3, *patch), dtype=np.float32)
    for k in range(3):
        noise = rng.standard_normal(coarse)
        noise = ndimage.gaussian_filter(noise, 1.0, mode="wrap")
        noise *= alpha_vox / max(float(noise.std()), 1e-6)
        out[k] = ndimage.zoom(noise, [p / c for p, c in zip(patch, coarse)], order=1, grid_mode=True,
                              mode="nearest")[tuple(slice(0, p) for p in patch)]
    return out


def spatial_sample(image, label, *, centre, patch, cfg: dict[str, Any], rng):
    """Crop a patch around ``centre``; with probability ``p_spatial`` rotate/scale/warp it."""
    if rng.random() >= cfg["p_spatial"]:
        return crop_patch(image, label, centre=centre, patch=patch)
    angles = np.deg2rad(rng.uniform(-cfg["rotate_deg"], cfg["rotate_deg"], size=3))
    zoom = rng.uniform(*cfg["scale"])
    matrix = rotation_matrix(angles) / zoom
    disp = None
    if cfg["elastic"]:
        disp = elastic_displacement(patch, sigma_vox=cfg["elastic_sigma_vox"], alpha_vox=cfg["elastic_alpha_vox"],
                                    rng=rng)
    return warped_patch(image, label, centre=centre, patch=patch, matrix=matrix, displacement=disp)


def random_flip(image: np.ndarray, label: np.ndarray, *, rng, axes=(0, 1, 2)):
    """Mirror along each axis with probability 0.5 (image (C, z, y, x), label (z, y, x))."""
    for ax in axes:
        if rng.random() < 0.5:
            image = np.flip(image, axis=ax + 1)
            label = np.flip(label, axis=ax)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def intensity_augment(image: np.ndarray, *, cfg: dict[str, Any], rng) -> np.ndarray:
    """Gaussian noise, blur, brightness, contrast and gamma, each with its own probability."""
    x = image
    if rng.random() < cfg["p_noise"]:
        std = rng.uniform(*cfg["noise_std"])
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)
    if rng.random() < cfg["p_blur"]:
        sigma = rng.uniform(*cfg["blur_sigma"])
        x = np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in x])
    if rng.random() < cfg["p_brightness"]:
        x = x * np.float32(rng.uniform(*cfg["brightness"]))
    if rng.random() < cfg["p_contrast"]:
        f = np.float32(rng.uniform(*cfg["contrast"]))
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
        x = np.clip((x - mean) * f + mean, lo, hi)
    if rng.random() < cfg["p_gamma"]:
        g = rng.uniform(*cfg["gamma"])
        lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
        rng_ = np.maximum(hi - lo, 1e-6)
        mean, std = x.mean(axis=(1, 2, 3), keepdims=True), x.std(axis=(1, 2, 3), keepdims=True)
        y = ((x - lo) / rng_) ** np.float32(g) * rng_ + lo
        # keep the first two moments, as the normalisation set them
        x = (y - y.mean(axis=(1, 2, 3), keepdims=True)) / np.maximum(y.std(axis=(1, 2, 3), keepdims=True),
                                                                    1e-6) * std + mean
    return np.asarray(x, dtype=np.float32)
