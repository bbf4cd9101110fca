"""Tiles per second (read, tissue filter, encode): medseg vs a plain OpenSlide read_region loop.

Peer: for every grid position of the whole slide, ``OpenSlide.read_region`` at the best level,
RGBA -> RGB, resize to the tile size, a per-tile saturation test (tissue if >= 50 % of pixels have
saturation > 0.08; intensity > 20 for fluorescence), then the kept tiles are encoded in batches
in the main process. medseg: tissue mask on a low-resolution level, tile grid, tiles read by
DataLoader workers and encoded in batches (``medseg.wsi``). Same encoder (fixed seed), batch size,
device and tile positions' resolution. Rates count kept tissue tiles per wall-clock second.

    PYTHONPATH=. python benchmarks/bench_wsi_tiles.py --slides ../shared/data/wsi/*.svs ../shared/data/wsi/*.ndpi
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.io.wsi import open_slide  # noqa: E402
from medseg.models.encoders import create_encoder  # noqa: E402
from medseg.wsi.features import EncoderSpec, extract_slide_features, normalise  # noqa: E402
from medseg.wsi.tile_slides import TilingParams, tile_slide  # noqa: E402
from medseg.wsi.tiling import load_tiles  # noqa: E402
from medseg.wsi.tissue import detect_mode, saturation  # noqa: E402


def peer(path: Path, encoder, *, mpp: float, tile: int, batch: int, encode: bool) -> tuple[int, float]:
    import openslide
    from PIL import Image

    t0 = time.perf_counter()
    s = openslide.OpenSlide(str(path))
    smpp = float(s.properties["openslide.mpp-x"])
    want = mpp / smpp
    level = max(i for i, d in enumerate(s.level_downsamples) if d <= want * 1.02)
    ds = s.level_downsamples[level]
    read = int(round(tile * want / ds))
    ext = int(round(tile * want))
    w, h = s.dimensions
    fluo = detect_mode(np.asarray(s.get_thumbnail((256, 256)).convert("RGB"))) == "fluorescence"
    kept, buf = 0, []
    for y in range(0, h - ext + 1, ext):
        for x in range(0, w - ext + 1, ext):
            im = s.read_region((x, y), level, (read, read)).convert("RGB")
            if read != tile:
                im = im.resize((tile, tile), Image.Resampling.BILINEAR)
            a = np.asarray(im)
            ok = (a.max(2) > 20).mean() >= 0.5 if fluo else (saturation(a) > 0.08).mean() >= 0.5
            if not ok:
                continue
            kept += 1
            if encode:
                buf.append(torch.from_numpy(np.array(a)).permute(2, 0, 1))
                if len(buf) == batch:
                    with torch.no_grad():
                        encoder(normalise(torch.stack(buf), EncoderSpec.mean, EncoderSpec.std))
                    buf = []
    if encode and buf:
        with torch.no_grad():
            encoder(normalise(torch.stack(buf), EncoderSpec.mean, EncoderSpec.std))
    return kept, time.perf_counter() - t0


def ours(path: Path, encoder, spec, out: Path, *, mpp: float, tile: int, batch: int, workers: int,
         encode: bool) -> tuple[int, float]:
    t0 = time.perf_counter()
    slide = open_slide(path)
    tile_slide(slide, out, TilingParams(mpp=mpp, tile_size=tile), name=path.stem)
    grid, _ = load_tiles(out / "tiles.h5")
    if encode:
        extract_slide_features(str(path), grid, encoder, device=torch.device("cpu"), spec=spec, batch_size=batch,
                               workers=workers)
    else:
        for x, y in grid.coords:
            slide.read_mpp((int(x), int(y)), (tile, tile), mpp=mpp)
    return len(grid), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=Path, nargs="+", required=True)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encoder", default="tile_resnet_small")
    ap.add_argument("--out", type=Path, default=Path("/tmp/medseg_bench_tiles"))
    args = ap.parse_args()
    torch.manual_seed(0)
    enc = create_encoder(args.encoder).eval()
    spec = EncoderSpec(name=args.encoder)
    print(f"torch threads {torch.get_num_threads()}, encoder {args.encoder}, {args.tile_size} px at {args.mpp} um/px")
    print(f"{'slide':28s} {'stage':16s} {'peer tiles':>10s} {'peer t/s':>9s} {'medseg tiles':>12s} "
          f"{'medseg t/s':>10s} {'ratio':>6s}")
    for path in args.slides:
        for encode in (False, True):
            kp, tp = peer(path, enc, mpp=args.mpp, tile=args.tile_size, batch=args.batch_size, encode=encode)
            km, tm = ours(path, enc, spec, args.out / path.stem, mpp=args.mpp, tile=args.tile_size,
                          batch=args.batch_size, workers=args.workers, encode=encode)
            rp, rm = kp / tp, km / tm
            stage = "read+filter+enc" if encode else "read+filter"
            print(f"{path.name[:28]:28s} {stage:16s} {kp:10d} {rp:9.1f} {km:12d} {rm:10.1f} {rm / rp:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
