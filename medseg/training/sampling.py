"""Patch sampling with foreground over-sampling, and the sample stream of an epoch.

Sample ``k`` of the whole run is a pure function of ``(seed, k)``: its case, centre and
augmentation come from ``numpy.random.default_rng([seed, k])``. So the stream does not depend on
the number of DataLoader workers, and resuming at epoch ``e`` continues exactly where an
uninterrupted run would be. Under DDP, rank ``r`` of ``W`` takes the samples of its own slots
(the DistributedSampler idea, without its shuffling state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from medseg.training.augment import intensity_augment, random_flip, spatial_sample

_MAX_FG_POINTS = 20000


class TrainCase:
    """A preprocessed case in RAM: image (C, z, y, x) float32, label (z, y, x) uint8, and a
    sample of voxel coordinates per foreground class (for over-sampling)."""

    def __init__(self, case: str, image: np.ndarray, label: np.ndarray, *, num_classes: int, seed: int = 0):
        self.case, self.image, self.label = case, image, label
        rng = np.random.default_rng(seed)
        self.fg: dict[int, np.ndarray] = {}
        for c in range(1, num_classes):
            idx = np.argwhere(label == c)
            if len(idx) > _MAX_FG_POINTS:
                idx = idx[np.sort(rng.choice(len(idx), _MAX_FG_POINTS, replace=False))]
            if len(idx):
                self.fg[c] = idx.astype(np.int32)


def choose_centre(case: TrainCase, patch: Sequence[int], *, force_fg: bool, rng) -> np.ndarray:
    """Centre voxel (z, y, x) of the next patch.

    ``force_fg``: a random voxel of a random foreground class present in the case. Otherwise a
    uniform position such that the patch stays inside the volume where it fits (it is centred on
    axes where the volume is smaller than the patch, with a little jitter).
    """
    if force_fg and case.fg:
        classes = sorted(case.fg)
        pts = case.fg[classes[int(rng.integers(len(classes)))]]
        return pts[int(rng.integers(len(pts)))].astype(np.int64)
    centre = []
    for n, p in zip(case.label.shape, patch):
        lo, hi = p // 2, n - (p - p // 2)      # centres keeping [c - p//2, c - p//2 + p) inside
        if hi >= lo:
            centre.append(int(rng.integers(lo, hi + 1)))
        else:                                   # volume smaller than the patch: jitter around the middle
            mid, slack = n // 2, (p - n) // 2
            centre.append(int(rng.integers(mid - min(slack, 2), mid + min(slack, 2) + 1)))
    return np.array(centre, dtype=np.int64)


class PatchDataset(Dataset):
    """Map-style data set whose item ``k`` is the ``k``-th training sample of the run.

    Returns ``(image float32 tensor (C, *patch), label int64 tensor (*patch))``.
    """

    def __init__(self, cases: list[TrainCase], *, patch: Sequence[int], augment: dict[str, Any], seed: int,
                 foreground_fraction: float):
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = cases
        self.patch = tuple(int(p) for p in patch)
        self.augment = augment
        self.seed = int(seed)
        self.fg_frac = float(foreground_fraction)

    def __len__(self) -> int:  # sample indices are unbounded; the sampler picks them
        return 2 ** 62

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(k)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        force_fg = rng.random() < self.fg_frac
        centre = choose_centre(case, self.patch, force_fg=force_fg, rng=rng)
        img, lab = spatial_sample(case.image, case.label, centre=centre, patch=self.patch, cfg=self.augment, rng=rng)
        if self.augment["flip"]:
            img, lab = random_flip(img, lab, rng=rng)
        img = intensity_augment(img, cfg=self.augment, rng=rng)
        return img, lab

    def __getitem__(self, k: int):
        img, lab = self.sample(k)
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(lab.astype(np.int64))


class EpochSampler(Sampler):
    """Global sample indices of one epoch for one rank.

    Iteration ``i`` of epoch ``e`` uses, on rank ``r`` of ``W``, samples
    ``((e * iters + i) * W + r) * batch + b`` for ``b < batch``. Call :meth:`set_epoch` before
    each epoch (as with DistributedSampler).
    """

    def __init__(self, *, iters_per_epoch: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.iters, self.batch, self.rank, self.world = iters_per_epoch, batch_size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.iters * self.batch

    def __iter__(self):
        for i in range(self.iters):
            base = ((self.epoch * self.iters + i) * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
