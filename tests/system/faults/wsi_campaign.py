"""Damaged slides through ``medseg wsi tile`` and ``wsi features`` as one batch with the clean slides.

``python -m tests.system.faults.wsi_campaign`` (from the repository root) prints the figures used in
docs/reliability.md.

A variant ends as ``error`` (a per-slide ``error:<code>`` row, code in ``SLIDE_CODES``),
``unaffected`` (the damage lies in bytes medseg never reads, e.g. an SVS thumbnail image or a
pyramid level it does not use, and its tiles and features are identical to the clean slide's),
``silent`` (no error but tiles or features differ from the clean slide's: garbage) or
``wrong_code``. An exception escaping the batch is a crash.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tests.paths import SHARED

WSI = SHARED / "wsi"
SLIDES = ("CMU-1-Small-Region.svs", "test3-DAPI-2-387.ndpi", "test3-TRITC-2-560.ndpi")


def run_slide_batch(cases, slides: list[Path], root: Path, tile_size: int = 256) -> dict[str, list[str]]:
    """Tile and encode variants and clean slides in one batch; classify each variant."""
    import torch

    from medseg.io.wsi import slide_id
    from medseg.models.encoders import create_encoder, save_weights
    from medseg.wsi.features import EncoderSpec, extract_features_batch, load_features
    from medseg.wsi.tile_slides import TilingParams, tile_slides
    from medseg.wsi.tiling import load_tiles

    tiles, feats = root / "tiles", root / "feats"
    rows = {r["slide"]: r for r in tile_slides([*slides, *(c.path for c in cases)], tiles,
                                               TilingParams(tile_size=tile_size))}
    torch.manual_seed(0)
    w = root / "enc.safetensors"
    save_weights(create_encoder("tile_resnet_tiny"), w)
    spec = EncoderSpec(name="tile_resnet_tiny", weights=str(w))
    frows = {r["slide"]: r for r in extract_features_batch(tiles, feats, spec, device=torch.device("cpu"),
                                                           batch_size=32, workers=0)}
    clean = {}
    for s in slides:
        name = slide_id(s)
        assert rows[name]["status"] == "ok" and frows[name]["status"] == "ok", (name, rows[name], frows[name])
        clean[name] = load_features(feats / name / "features.h5")
    out: dict[str, list[str]] = {"error": [], "unaffected": [], "silent": [], "wrong_code": []}
    codes: Counter = Counter()
    for c in cases:
        name, src = slide_id(c.path), slide_id(c.ref)
        status = rows[name]["status"]
        if status == "ok":
            status = frows[name]["status"]
        if status.startswith("error:"):
            code = status[len("error:"):]
            codes[code] += 1
            out["error" if code in c.expected else "wrong_code"].append(f"{name}: {status}")
            continue
        grid, _ = load_tiles(tiles / name / "tiles.h5")
        ref_grid, _ = load_tiles(tiles / src / "tiles.h5")
        same = np.array_equal(grid.coords, ref_grid.coords)
        if same and status == "ok":
            f, _, _ = load_features(feats / name / "features.h5")
            same = np.array_equal(f, clean[src][0])
        out["unaffected" if same else "silent"].append(f"{name}: {status}")
    out["codes"] = [f"{k}={v}" for k, v in sorted(codes.items())]
    return out


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)
    from tests.system.faults.wsi_faults import make_slide_corpus

    slides = [WSI / s for s in SLIDES]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cases = make_slide_corpus(Path(d) / "corpus", slides)
        res = run_slide_batch(cases, slides, Path(d) / "run")
        dt = time.perf_counter() - t0
    fam = Counter(c.family for c in cases)
    print(f"slide variants: {len(cases)} from {len(slides)} real slides ({dt:.1f} s), "
          f"families {dict(sorted(fam.items()))}")
    print(f"crashes: 0 (the batch finished), per-slide errors: {len(res['error'])}, unaffected (damage in bytes "
          f"never read, outputs identical to the clean slide's): {len(res['unaffected'])}, silent successes: "
          f"{len(res['silent'])}, wrong code: {len(res['wrong_code'])}")
    print("codes:", ", ".join(res["codes"]))
    for k in ("unaffected", "silent", "wrong_code"):
        for item in res[k]:
            print(f"  {k}: {item}")


if __name__ == "__main__":
    main()
