"""Helpers for the training tests: a tiny registered test model and tiny synthetic data sets.

(Imported by tests/training/, tests/test_bundle.py and tests/preprocess/test_fingerprint.py modules.)
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medseg.models import SEG_MODELS, register_seg_model
from tests.paths import REPO

TINY = "tiny_test_net"
REPO_ROOT = REPO


class TinyTestNet(nn.Module):
    """Two-level conv net (downsampling factor 2) with a deep-supervision output at half resolution."""

    def __init__(self, *, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, width: int = 4):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("TinyTestNet is 3D only")
        self.enc = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.InstanceNorm3d(width, affine=True),
                                 nn.LeakyReLU(0.01))
        self.down = nn.Sequential(nn.Conv3d(width, 2 * width, 3, stride=2, padding=1),
                                  nn.InstanceNorm3d(2 * width, affine=True), nn.LeakyReLU(0.01))
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv3d(2 * width, width, 3, padding=1), nn.LeakyReLU(0.01))
        self.head = nn.Conv3d(width, out_channels, 1)
        self.aux = nn.Conv3d(2 * width, out_channels, 1)

    def forward_with_aux(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = self.enc(x)
        d = self.down(e)
        y = self.dec(torch.cat([self.up(d), e], 1))
        return [self.head(y), self.aux(d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


if TINY not in SEG_MODELS:
    register_seg_model(TINY)(TinyTestNet)


def _save(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    # medseg arrays are (z, y, x); nibabel wants (i, j, k) = (x, y, z)
    aff = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), aff), str(path))


def make_case(rng: np.random.Generator, shape=(16, 20, 16)) -> tuple[np.ndarray, np.ndarray]:
    """Image with two bright blobs (labels 1 and 2) in noise."""
    zz, yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.uint8)
    c1 = np.array(shape) // 2 + rng.integers(-2, 3, 3) - np.array([0, 4, 0])
    c2 = c1 + np.array([0, 7, 0])
    lab[(zz - c1[0]) ** 2 + (yy - c1[1]) ** 2 + (xx - c1[2]) ** 2 <= 9] = 1
    lab[(zz - c2[0]) ** 2 + (yy - c2[1]) ** 2 + (xx - c2[2]) ** 2 <= 9] = 2
    img = (rng.normal(100, 10, shape) + 60.0 * (lab == 1) + 120.0 * (lab == 2)).astype(np.float32)
    return img, lab


def make_dataset(root: Path, *, n: int = 6, shape=(16, 20, 16), seed: int = 0, dataset_json: bool = True) -> Path:
    """MSD-layout data set of ``n`` synthetic cases under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, lab = make_case(rng, shape)
        _save(img, root / "imagesTr" / f"case_{i:03d}.nii.gz")
        _save(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    if dataset_json:
        (root / "dataset.json").write_text(json.dumps(
            {"name": "synthetic", "labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    return root


def tiny_config(root: Path, out: Path, **training) -> dict:
    """A config that trains the tiny net for a few iterations on the synthetic set."""
    # one thread: tiny convolutions on a shared 2-core machine run several times faster than with two
    t = {"epochs": 2, "iters_per_epoch": 3, "batch_size": 2, "progress": False, "seed": 3, "lr": 3e-3, "threads": 1}
    t.update(training)
    return {"data": {"root": str(root), "num_folds": 3, "fold": 0},
            "model": {"name": TINY},
            "plan": {"patch_size": [16, 16, 16], "divisor": 2},
            "augment": {"p_spatial": 0.5},
            "training": t,
            "output": {"dir": str(out)}}

