"""Tile one or many slides: tissue mask, tile grid, HDF5 coordinates, overlay PNG, JSON summary.

``tile_slide`` writes ``OUT/<slide>/tiles.h5``, ``mask.png`` and ``summary.json`` (status ``ok`` or
``no_tissue``, tile count, tissue area in mm^2). ``tile_slides`` runs a batch: a slide that fails is
reported with ``status: error:<code>`` and the others go on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError, status_of
from medseg.fsutil import atomic_write_text, safe_join
from medseg.io.wsi import Slide, open_slide, slide_ids
from medseg.wsi.overlay import mask_grid_overlay, save_png
from medseg.wsi.tiling import save_tiles, tile_grid
from medseg.wsi.tissue import area_mm2, tissue_mask

log = logging.getLogger("medseg.wsi.tile")

__all__ = ["TilingParams", "tile_slide", "tile_slides"]


@dataclass
class TilingParams:
    mpp: float = 0.5
    tile_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.5
    mask_mpp: float = 8.0           # resolution of the tissue mask (low-resolution level)
    mode: str = "auto"              # brightfield | fluorescence | auto
    min_area_mm2: float = 0.01
    slide_mpp: float | None = None  # override/supply the slide's own resolution

    def __post_init__(self) -> None:
        """Resolutions are checked where they enter (finite, within ``medseg.io.slide_checks.MPP_RANGE``): a usage error
        (``ConfigError``, code ``bad_mpp``) before any slide, never a silent ``no_tissue``."""
        from medseg.errors import ConfigError
        from medseg.io.slide_checks import check_mpp

        try:
            self.mpp = check_mpp(self.mpp, what="--mpp (tile resolution)")
            self.mask_mpp = check_mpp(self.mask_mpp, what="mask_mpp")
            if self.slide_mpp is not None:
                self.slide_mpp = check_mpp(self.slide_mpp, what="--slide-mpp")
        except MedsegError as exc:
            raise ConfigError(exc.problem, code="bad_mpp") from None


def tile_slide(slide: Slide, out_dir: Path, p: TilingParams, *, name: str) -> dict[str, Any]:
    """Tile an open slide into ``out_dir``; returns the summary dict (also written as JSON)."""
    t0 = time.perf_counter()
    mask_mpp = max(p.mask_mpp, slide.mpp)
    thumb = slide.thumbnail(mpp=mask_mpp)
    mask = tissue_mask(thumb, mpp=mask_mpp, mode=p.mode, min_area_mm2=p.min_area_mm2)
    grid = tile_grid(mask, mask_mpp=mask_mpp, slide_dimensions=slide.dimensions, slide_mpp=slide.mpp, mpp=p.mpp,
                     tile_size=p.tile_size, overlap=p.overlap, min_tissue=p.min_tissue)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = "ok" if len(grid) else "no_tissue"
    meta = {"slide": name, "slide_path": slide.path, "vendor": slide.vendor, "mask_mpp": mask_mpp,
            "objective_power": slide.objective_power, "min_tissue": p.min_tissue, "status": status}
    save_tiles(out_dir / "tiles.h5", grid, extra=meta)
    overlay = mask_grid_overlay(thumb, mask, grid.coords, extent_level0=grid.extent_level0,
                                scale=slide.mpp / mask_mpp)
    save_png(out_dir / "mask.png", overlay)
    save_png(out_dir / "thumbnail.png", thumb)
    summary = {**meta, "n_tiles": len(grid), "tissue_area_mm2": round(area_mm2(mask, mpp=mask_mpp), 4),
               "mpp": p.mpp, "tile_size": p.tile_size, "overlap": p.overlap, "slide_mpp": slide.mpp,
               "dimensions": list(slide.dimensions), "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    if status == "no_tissue":
        log.warning("%s: no tissue found; no tiles (status no_tissue)", name)
    return summary


def tile_slides(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`_tile_slides` holding the output folder's lock (:func:`medseg.fsutil.output_lock`, shared by
    every verb that writes a folder): a second run into the same folder fails with code ``busy``."""
    from medseg.fsutil import output_lock

    out = kwargs["out_root"] if "out_root" in kwargs else args[1]
    with output_lock(out):
        return _tile_slides(*args, **kwargs)


def _tile_slides(paths: list[Path], out_root: Path, p: TilingParams) -> list[dict[str, Any]]:
    """Tile every slide; failures are reported per slide and do not stop the batch."""
    rows = []
    seen: set[str] = set()
    for path, name in zip(paths, slide_ids(paths)):
        if name in seen:
            rows.append({"slide": name, "path": str(path), "status": "error:duplicate_name",
                         "error": "two input slides share this name"})
            continue
        seen.add(name)
        try:
            slide = open_slide(path, mpp=p.slide_mpp)
            try:
                s = tile_slide(slide, safe_join(out_root, name), p, name=name)
            finally:
                slide.close()
            rows.append({"slide": name, "path": str(path), **s})
        except MedsegError as exc:
            log.error("%s", exc)
            rows.append({"slide": name, "path": str(path), "status": status_of(exc), "error": exc.problem})
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
            log.error("%s: %s: %s", path, type(exc).__name__, exc)
            log.debug("slide %s traceback", name, exc_info=True)
            rows.append({"slide": name, "path": str(path), "status": status_of(exc),
                         "error": f"{type(exc).__name__}: {exc}"})
    return rows
