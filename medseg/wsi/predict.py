"""``medseg wsi predict``: slide probabilities, attention heatmaps and top-attended tiles.

For each slide: tissue + tiles with the bundle's tiling parameters, features with its encoder,
the aggregator's probability and attention. Writes ``OUT/predictions.csv`` (slide, probability,
label, status, tile count) and per slide ``OUT/<slide>/heatmap.png``, ``attention.csv`` and
``top_tiles/rank<NN>_x<X>_y<Y>.png``. A slide that fails is a row with ``status=error:<code>``.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.csvsafe import csv_text
from medseg.errors import MedsegError, status_of
from medseg.fsutil import atomic_write_text, safe_join
from medseg.io.wsi import open_slide, slide_ids
from medseg.mil.fit import attention_weights, predict_bags
from medseg.wsi.bundle import load_bundle
from medseg.wsi.features import extract_slide_features
from medseg.wsi.overlay import heatmap_overlay, save_png
from medseg.wsi.tile_slides import tile_slide
from medseg.wsi.tiling import load_tiles

log = logging.getLogger("medseg.wsi.predict")

__all__ = ["predict_slides", "heatmap_mpp"]
HEATMAP_SIDE = 1024  # px, long side of the heatmap PNG (coarser slides: the mask's resolution)


def predict_slides(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`_predict_slides` holding the output folder's lock (:func:`medseg.fsutil.output_lock`, shared by
    every verb that writes a folder): a second run into the same folder fails with code ``busy``."""
    from medseg.fsutil import output_lock

    out = kwargs["out"] if "out" in kwargs else args[2]
    with output_lock(out):
        return _predict_slides(*args, **kwargs)


def _predict_slides(bundle: Path, slides: list[Path], out: Path, *, device: torch.device, workers: int = 2,
                   batch_size: int = 32, top_k: int = 8, slide_mpp: float | None = None) -> list[dict[str, Any]]:
    tiling, spec, ens, doc = load_bundle(bundle)
    if slide_mpp is not None:
        from medseg.errors import ConfigError
        from medseg.io.slide_checks import check_mpp

        try:
            tiling.slide_mpp = check_mpp(slide_mpp, what="--slide-mpp")
        except MedsegError as exc:
            raise ConfigError(exc.problem, code="bad_mpp") from None
    encoder = spec.build(device)
    classes, thr = doc.get("classes", ["0", "1"]), float(doc.get("threshold", 0.5))
    rows: list[dict[str, Any]] = []
    for path, name in zip(slides, slide_ids(slides)):
        row: dict[str, Any] = {"slide": name, "probability": "", "label": "", "status": "", "n_tiles": 0}
        try:
            sdir = safe_join(out, name)
            slide = open_slide(path, mpp=tiling.slide_mpp)
            try:
                summ = tile_slide(slide, sdir, tiling, name=name)
                row["n_tiles"] = summ["n_tiles"]
                if summ["status"] == "no_tissue":
                    row["status"] = "no_tissue"
                    rows.append(row)
                    continue
                grid, _ = load_tiles(sdir / "tiles.h5")
                feats = extract_slide_features(str(path), grid, encoder, device=device, spec=spec,
                                               batch_size=batch_size, workers=workers, slide_mpp=tiling.slide_mpp)
                prob = float(predict_bags(ens, [feats])[0])
                att = attention_weights(ens, feats)
                _write_slide_outputs(slide, sdir, grid, att, tiling.mask_mpp, top_k)
            finally:
                slide.close()
            row.update(probability=round(prob, 6), label=classes[int(prob >= thr)], status="ok")
        except MedsegError as exc:
            log.error("%s", exc)
            row["status"] = status_of(exc)
            row["error"] = exc.problem
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
            log.error("%s: %s: %s", path, type(exc).__name__, exc)
            log.debug("slide %s traceback", name, exc_info=True)
            row["status"] = status_of(exc)
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    write_predictions_csv(rows, out / "predictions.csv")
    return rows


def write_predictions_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per slide, atomically; text a spreadsheet would run as a formula is quoted (:mod:`medseg.csvsafe`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["slide", "probability", "label", "status", "n_tiles", "error"])
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_text(r.get(k, "")) for k in w.fieldnames})
    return atomic_write_text(path, buf.getvalue())


def heatmap_mpp(slide, mask_mpp: float, long_side: int = HEATMAP_SIDE) -> float:
    """Resolution of the heatmap's thumbnail: its long side about ``long_side`` px, but never
    finer than the slide nor coarser than the tissue mask."""
    return max(slide.mpp, min(mask_mpp, max(slide.dimensions) * slide.mpp / long_side))


def _write_slide_outputs(slide, sdir: Path, grid, att: np.ndarray, mask_mpp: float, top_k: int) -> None:
    mmpp = heatmap_mpp(slide, mask_mpp)
    thumb = slide.thumbnail(mpp=mmpp)
    save_png(sdir / "heatmap.png", heatmap_overlay(thumb, grid.coords, att, extent_level0=grid.extent_level0,
                                                  scale=slide.mpp / mmpp, legend="attention"))
    order = np.argsort(-att, kind="stable")
    lines = ["rank,x,y,attention"] + [f"{r + 1},{grid.coords[i][0]},{grid.coords[i][1]},{att[i]:.6g}"
                                      for r, i in enumerate(order)]
    atomic_write_text(sdir / "attention.csv", "\n".join(lines) + "\n")
    for r, i in enumerate(order[:top_k]):
        x, y = (int(v) for v in grid.coords[i])
        tile = slide.read_mpp((x, y), (grid.tile_size, grid.tile_size), mpp=grid.mpp)
        save_png(sdir / "top_tiles" / f"rank{r + 1:02d}_x{x}_y{y}.png", tile)
