"""Patch sources for BCL: where the pixels of each bag's instances come from.

A source knows the bag labels, the bag sizes and how to read patches ``(k, 3, H, W)`` float
(normalised) for given instance indices. :class:`ArrayPatchSource` holds images in memory
(digit bags, exported tiles); :class:`SlidePatchSource` reads tiles from slides on demand.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from medseg.wsi.features import IMAGENET_MEAN, IMAGENET_STD, normalise

__all__ = ["PatchSource", "ArrayPatchSource", "SlidePatchSource", "read_pairs"]


class PatchSource(Protocol):
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int: ...

    def bag_size(self, bag: int) -> int: ...

    def read(self, bag: int, idx: np.ndarray) -> torch.Tensor: ...


def read_pairs(source: PatchSource, bags: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Patches for the pairs ``(bags[j], idx[j])``, in that order, ``(n, 3, H, W)``.

    Reads are grouped: one ``source.read`` per distinct bag, holding that bag's distinct indices
    (sorted), so a slide source reads a batch's tiles of one slide together (in parallel threads)
    instead of one call per tile; repeated pairs are read once. The result equals stacking
    ``source.read(b, [i])`` pair by pair.
    """
    bags = np.asarray(bags, np.int64)
    idx = np.asarray(idx, np.int64)
    if bags.size == 0:
        raise ValueError("read_pairs needs at least one pair")
    key = np.stack([bags, idx], 1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)  # sorted by bag, then index
    parts = [source.read(int(b), uniq[uniq[:, 0] == b, 1]) for b in np.unique(uniq[:, 0])]
    return torch.cat(parts)[torch.as_tensor(inverse.reshape(-1))]


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
    """Tiles of slides read on demand at the grid's resolution (one open handle per slide).

    The tiles of one :meth:`read` are read by ``threads`` threads (OpenSlide handles may be read
    concurrently, and its decoding releases the GIL)."""

    def __init__(self, slide_paths: list[str], grids: list, labels, *, ids: list[str],
                 slide_mpp: float | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads: int = 4):
        self.paths, self.grids = slide_paths, grids
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids, self.slide_mpp, self.mean, self.std = ids, slide_mpp, mean, std
        self.threads = max(1, int(threads))
        self._open: dict[int, object] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def bag_size(self, bag: int) -> int:
        return len(self.grids[bag])

    def read(self, bag: int, idx: np.ndarray) -> torch.Tensor:
        from medseg.io.wsi import open_slide

        if bag not in self._open:
            self._open[bag] = open_slide(self.paths[bag], mpp=self.slide_mpp)
        s, g = self._open[bag], self.grids[bag]
        idx = np.asarray(idx).reshape(-1)

        def one(i):
            return s.read_mpp(tuple(int(v) for v in g.coords[i]), (g.tile_size, g.tile_size), mpp=g.mpp)

        if self.threads > 1 and len(idx) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medseg-patches")
            tiles = list(self._pool.map(one, idx))
        else:
            tiles = [one(i) for i in idx]
        x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
        return normalise(x, self.mean, self.std)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for s in self._open.values():
            s.close()
        self._open.clear()
