"""Whole-slide images: ``medseg wsi info|tile|features|train|predict``.

``medseg wsi info SLIDE`` prints levels, mpp, objective power and associated images.
``medseg wsi tile SLIDE... --out DIR --mpp 0.5 --tile-size 256`` writes ``DIR/<slide>/`` with
``tiles.h5`` (coordinates + metadata), ``mask.png`` (tissue and grid over the thumbnail) and
``summary.json`` (status, tile count, tissue area in mm^2); a bad slide is reported, the rest go on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="wsi_cmd", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="print levels, mpp, objective power, associated images")
    info.add_argument("slides", nargs="+", type=Path)
    info.add_argument("--mpp", type=float, default=None, help="um/px for slides without resolution metadata")
    info.add_argument("--json", action="store_true", help="print JSON")

    tile = sub.add_parser("tile", help="tissue mask and tile coordinates for one or many slides")
    tile.add_argument("slides", nargs="+", type=Path)
    tile.add_argument("--out", type=Path, required=True)
    tile.add_argument("--mpp", type=float, default=0.5, help="tile resolution, um/px (default 0.5)")
    tile.add_argument("--tile-size", type=int, default=256, help="tile side in pixels at --mpp")
    tile.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tiles")
    tile.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a tile")
    tile.add_argument("--mode", default="auto", choices=["auto", "brightfield", "fluorescence"])
    tile.add_argument("--min-area-mm2", type=float, default=0.01, help="drop tissue pieces smaller than this")
    tile.add_argument("--slide-mpp", type=float, default=None,
                      help="um/px of the slides when their metadata lacks it (plain images)")

    from medseg.cli import wsi_ml

    wsi_ml.add_parsers(sub)


def run(args: argparse.Namespace) -> int:
    if args.wsi_cmd == "info":
        return _info(args)
    if args.wsi_cmd == "tile":
        return _tile(args)
    from medseg.cli import wsi_ml

    return wsi_ml.run(args)


def _info(args: argparse.Namespace) -> int:
    from medseg.errors import MedsegError
    from medseg.io.wsi import open_slide

    bad = 0
    for path in args.slides:
        try:
            s = open_slide(path, mpp=args.mpp)
        except MedsegError as exc:
            print(f"{path}: ERROR {exc.problem}")
            bad += 1
            continue
        info = s.info()
        s.close()
        if args.json:
            print(json.dumps(info))
            continue
        w, h = info["dimensions"]
        print(f"{path}\n  vendor {info['vendor']}, {w} x {h} px, mpp {info['mpp']:.4f} um/px, "
              f"objective {info['objective_power'] or 'unknown'}x, {len(info['levels'])} level(s)")
        for lv in info["levels"]:
            print(f"  level {lv['level']}: {lv['width']} x {lv['height']}  downsample {lv['downsample']:g}  "
                  f"{lv['mpp']:.4f} um/px")
        assoc = ", ".join(f"{k} ({v[0]}x{v[1]})" for k, v in info["associated_images"].items()) or "none"
        print(f"  associated images: {assoc}")
    return 1 if bad else 0


def _tile(args: argparse.Namespace) -> int:
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    p = TilingParams(mpp=args.mpp, tile_size=args.tile_size, overlap=args.overlap, min_tissue=args.min_tissue,
                     mode=args.mode, min_area_mm2=args.min_area_mm2, slide_mpp=args.slide_mpp)
    rows = tile_slides(list(args.slides), args.out, p)
    from medseg.fsutil import atomic_write_text

    atomic_write_text(args.out / "tiling.json", json.dumps(rows, indent=1))
    for r in rows:
        if r["status"].startswith("error"):
            print(f"{r['slide']}: {r['status']} - {r['error']}")
        else:
            print(f"{r['slide']}: {r['status']}, {r['n_tiles']} tiles, tissue {r['tissue_area_mm2']:.2f} mm^2")
    return 1 if any(r["status"].startswith("error") for r in rows) else 0
