"""Patch sources for BCL: where the pixels of each bag's instances come from.

A source knows the bag labels, the bag sizes and how to read patches ``(k, 3, H, W)`` float
(normalised) for given instance indices. :class:`ArrayPatchSource` holds images in memory
(digit bags, exported tiles); :class:`SlidePatchSource` reads tiles from slides on demand.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from medseg.wsi.features import IMAGENET_MEAN, IMAGENET_STD, normalise

__all__ = ["PatchSource", "ArrayPatchSource", "SlidePatchSource"]


class PatchSource(Protocol):
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int: ...

    def bag_size(self, bag: int) -> int: ...

    def read(self, bag: int, idx: np.ndarray) -> torch.Tensor: ...


class ArrayPatchSource:
    """Bags of in-memory images: ``images[b]`` is float ``(n_b, 3, H, W)`` (already normalised)."""

    def __init__(self, images: list[np.ndarray], labels, *, ids: list[str] | None = None,
                 instance_labels: list[np.ndarray] | None = None):
        self.images = [torch.as_tensor(np.asarray(im, np.float32)) for im in images]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = ids or [str(i) for i in range(len(images))]
        self.instance_labels = instance_labels

    def __len__(self) -> int:
        return len(self.images)

    def bag_size(self, bag: int) -> int:
        return int(self.images[bag].shape[0])

    def read(self, bag: int, idx: np.ndarray) -> torch.Tensor:
        return self.images[bag][torch.as_tensor(np.asarray(idx, dtype=np.int64))]


class SlidePatchSource:
    """Tiles of slides read on demand at the grid's resolution (one open handle per slide)."""

    def __init__(self, slide_paths: list[str], grids: list, labels, *, ids: list[str],
                 slide_mpp: float | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.paths, self.grids = slide_paths, grids
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids, self.slide_mpp, self.mean, self.std = ids, slide_mpp, mean, std
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def bag_size(self, bag: int) -> int:
        return len(self.grids[bag])

    def read(self, bag: int, idx: np.ndarray) -> torch.Tensor:
        from medseg.io.wsi import open_slide

        if bag not in self._open:
            self._open[bag] = open_slide(self.paths[bag], mpp=self.slide_mpp)
        s, g = self._open[bag], self.grids[bag]
        tiles = [s.read_mpp(tuple(int(v) for v in g.coords[i]), (g.tile_size, g.tile_size), mpp=g.mpp)
                 for i in np.asarray(idx)]
        x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
        return normalise(x, self.mean, self.std)
