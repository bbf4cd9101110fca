"""Tile grids at a target resolution over the tissue of a slide, and their storage (HDF5).

Coordinates are level-0 pixels ``(x, y)`` of each tile's top-left corner; a tile covers
``tile_size * mpp / slide.mpp`` level-0 pixels. Tiles lie fully inside the slide and keep at least
``min_tissue`` of their area on the tissue mask.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.fsutil import atomic_path

__all__ = ["TileGrid", "tile_grid", "save_tiles", "load_tiles"]


@dataclass
class TileGrid:
    coords: np.ndarray            # (N, 2) int64 level-0 (x, y)
    tissue_fraction: np.ndarray   # (N,) float32
    mpp: float                    # target resolution of a tile, um/px
    tile_size: int                # output pixels per side
    overlap: int                  # output pixels shared by neighbours
    extent_level0: float          # level-0 pixels per tile side
    slide_mpp: float
    slide_dimensions: tuple[int, int]

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("coords"); d.pop("tissue_fraction")
        d["slide_dimensions"] = list(self.slide_dimensions)
        return d

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def tile_grid(mask: np.ndarray, *, mask_mpp: float, slide_dimensions: tuple[int, int], slide_mpp: float,
              mpp: float, tile_size: int, overlap: int = 0, min_tissue: float = 0.5) -> TileGrid:
    """Tiles of ``tile_size`` px at ``mpp`` um/px whose tissue fraction (on ``mask`` ``(h, w)`` at
    ``mask_mpp``) is at least ``min_tissue``; ``overlap`` px shared between neighbours."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= overlap < tile_size (got {tile_size}, {overlap})")
    if mpp < slide_mpp * (1 - 0.02):
        raise InputError(f"slide resolution is {slide_mpp:.4g} um/px; cannot tile at the finer {mpp:.4g} um/px "
                         "(choose --mpp >= the slide's)", code="mpp_too_fine")
    f = mpp / slide_mpp
    if abs(f - 1) <= 0.02:
        f = 1.0
    extent = tile_size * f
    stride = (tile_size - overlap) * f
    w0, h0 = slide_dimensions
    nx = int(np.floor((w0 - extent) / stride + 1e-9)) + 1 if w0 >= extent else 0
    ny = int(np.floor((h0 - extent) / stride + 1e-9)) + 1 if h0 >= extent else 0
    xs = np.round(np.arange(nx) * stride).astype(np.int64)
    ys = np.round(np.arange(ny) * stride).astype(np.int64)
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], 1)
    frac = tissue_fractions(mask, coords, extent_level0=extent, scale=slide_mpp / mask_mpp)
    keep = frac >= min_tissue
    return TileGrid(coords[keep], frac[keep].astype(np.float32), float(mpp), int(tile_size), int(overlap),
                    float(extent), float(slide_mpp), (int(w0), int(h0)))


def tissue_fractions(mask: np.ndarray, coords: np.ndarray, *, extent_level0: float, scale: float) -> np.ndarray:
    """Mean of ``mask`` over each tile footprint (level-0 ``coords``, ``scale`` = mask px per level-0 px).

    Uses a summed-area table, so the cost does not depend on the tile count.
    """
    if coords.size == 0:
        return np.zeros(0)
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    sat[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    h, w = mask.shape

    def clip(v, hi):
        return np.clip(np.round(v).astype(np.int64), 0, hi)

    x0 = clip(coords[:, 0] * scale, w)
    y0 = clip(coords[:, 1] * scale, h)
    x1 = np.maximum(clip((coords[:, 0] + extent_level0) * scale, w), np.minimum(x0 + 1, w))
    y1 = np.maximum(clip((coords[:, 1] + extent_level0) * scale, h), np.minimum(y0 + 1, h))
    tot = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return tot / area


def save_tiles(path: str | Path, grid: TileGrid, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``coords`` and ``tissue_fraction`` with the grid and slide metadata to HDF5, atomically."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=grid.coords.astype(np.int64))
            f.create_dataset("tissue_fraction", data=grid.tissue_fraction)
            f.attrs["meta"] = json.dumps({**grid.meta(), **(extra or {})})
    return Path(path)


def load_tiles(path: str | Path) -> tuple[TileGrid, dict[str, Any]]:
    """Read a tile file written by :func:`save_tiles`; returns the grid and the full metadata."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            coords = np.asarray(f["coords"])
            frac = np.asarray(f["tissue_fraction"])
            meta = json.loads(f.attrs["meta"])
    except (OSError, KeyError) as exc:
        raise InputError(f"not a medseg tile file: {exc}", path=path, code="bad_tiles") from None
    keys = ("mpp", "tile_size", "overlap", "extent_level0", "slide_mpp")
    grid = TileGrid(coords, frac, *(meta[k] for k in keys), tuple(meta["slide_dimensions"]))
    return grid, meta
