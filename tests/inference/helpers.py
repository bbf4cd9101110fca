"""Helpers for the predictor tests: tiny model bundles and small volumes with unusual geometry.

(Imported by tests/inference/, tests/cli/test_predict.py, tests/system/ and tests/test_executors.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medseg.bundle import save_weights, write_meta
from medseg.models import create_seg_model
from tests.paths import REPO

REPO_ROOT = REPO
TINY_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "features": [4, 8], "norm": "instance"}


def make_bundle(root: Path, *, seed: int = 0, patch=(16, 16, 16), spacing=(1.0, 1.0, 1.0),
                kwargs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """An untrained (seeded) tiny U-Net saved as a model bundle (bundle.yaml + model.safetensors)."""
    kw = dict(TINY_KWARGS if kwargs is None else kwargs)
    torch.manual_seed(seed)
    net = create_seg_model("unet", **kw)
    root.mkdir(parents=True, exist_ok=True)
    save_weights(net.state_dict(), root / "model.safetensors", architecture="unet")
    n_cls = kw["out_channels"]
    meta = {
        "model": {"name": "unet", "kwargs": kw},
        "labels": {0: "background", **{k: f"label_{k}" for k in range(1, n_cls)}},
        "channels": kw["in_channels"],
        "plan": {"spacing_mm": list(spacing), "patch_size": list(patch), "normalization": "zscore", "divisor": 2},
        "patch_size": list(patch),
        "spacing_mm": list(spacing),
    }
    meta.update(extra or {})
    write_meta(root, meta)
    return root


def save_nifti(arr: np.ndarray, path: Path, affine_zyx: np.ndarray) -> Path:
    """Write a (z, y, x) array with a (z, y, x)->RAS affine through nibabel directly (not medseg.io)."""
    aff = np.array(affine_zyx, dtype=np.float64)
    ijk = aff.copy()
    ijk[:, :3] = aff[:, [2, 1, 0]]
    nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), ijk), str(path))
    return path


def oblique_lps_affine(spacing=(2.0, 0.9, 1.1), origin=(12.5, -30.25, 7.0), angle_deg: float = 17.0) -> np.ndarray:
    """A (z, y, x)->RAS affine with rotated, LPS-like (x and y flipped) axes and anisotropic spacing."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0, -1.0, 1.0])                 # x -> L, y -> P
    cols_xyz = rot @ flip                              # columns: directions of i (x), j (y), k (z)
    direction_zyx = cols_xyz[:, [2, 1, 0]]
    a = np.eye(4)
    a[:3, :3] = direction_zyx * np.asarray(spacing)[None, :]
    a[:3, 3] = origin
    return a


def blob_image(shape=(20, 24, 18), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    r2 = ((zz - c[0]) / 5) ** 2 + ((yy - c[1]) / 6) ** 2 + ((xx - c[2]) / 4) ** 2
    return (100 + 50 * (r2 < 1) + rng.normal(0, 5, shape)).astype(np.float32)


def blob_cohort(root: Path, n: int, shape=(16, 16, 16)) -> Path:
    """``root/case_0..n-1.nii.gz``: blob images (seeds 0..n-1) on a 1 mm oblique LPS grid."""
    root.mkdir(parents=True, exist_ok=True)
    aff = oblique_lps_affine(spacing=(1.0, 1.0, 1.0))
    for i in range(n):
        save_nifti(blob_image(shape, seed=i), root / f"case_{i}.nii.gz", aff)
    return root
