"""``medseg wsi features|train|predict`` (parsers and runners; see medseg.cli.wsi).

``medseg wsi features --tiles DIR --out DIR --encoder tile_resnet18 --weights W.safetensors``
``medseg wsi train --config configs/wsi/train_demo.yaml`` (stages: tile, features, MIL, BCL)
``medseg wsi predict --model OUT/model --input SLIDES... --output DIR``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parsers(sub) -> None:
    f = sub.add_parser("features", help="encode the tiles of tiled slides (resumable per slide)")
    f.add_argument("--tiles", type=Path, required=True, help="output folder of 'medseg wsi tile'")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--encoder", default="tile_resnet18")
    f.add_argument("--weights", type=Path, default=None, help="encoder weights (.safetensors or .pt)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--workers", type=int, default=2, help="DataLoader workers reading tiles")
    f.add_argument("--device", default="auto")
    f.add_argument("--slide-mpp", type=float, default=None)

    t = sub.add_parser("train", help="tiling, features, MIL and BCL as pipeline stages from a YAML config")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("predict", help="slide probabilities, attention heatmaps and top tiles")
    p.add_argument("--model", type=Path, required=True, help="bundle folder written by 'medseg wsi train'")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="slide files or folders")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--top-k", type=int, default=8, help="top-attended tiles saved per slide")
    p.add_argument("--slide-mpp", type=float, default=None)


def run(args: argparse.Namespace) -> int:
    return {"features": _features, "train": _train, "predict": _predict}[args.wsi_cmd](args)


def _features(args: argparse.Namespace) -> int:
    from medseg.device import resolve_device
    from medseg.wsi.features import EncoderSpec, extract_features_batch

    spec = EncoderSpec(name=args.encoder, weights=str(args.weights) if args.weights else None)
    if spec.weights is None:
        print("note: no --weights given; the encoder is randomly initialised")
    rows = extract_features_batch(args.tiles, args.out, spec, device=resolve_device(args.device),
                                  batch_size=args.batch_size, workers=args.workers, slide_mpp=args.slide_mpp)
    for r in rows:
        print(json.dumps(r))
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


def _train(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.pipeline import run_pipeline

    cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
    ctx = run_pipeline(cfg, config_path=args.config.resolve())
    for name, res in ctx.results.items():
        if name.startswith("_"):
            continue
        short = {k: v for k, v in (res or {}).items() if k not in ("rows",)}
        print(f"{name}: {json.dumps(short, default=str)[:600]}")
    print(f"model bundle: {ctx.output_dir / 'model'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medseg.device import resolve_device
    from medseg.io.wsi import SLIDE_EXTENSIONS
    from medseg.wsi.predict import predict_slides

    slides: list[Path] = []
    for p in args.input:
        slides += sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_EXTENSIONS) if p.is_dir() else [p]
    rows = predict_slides(args.model, slides, args.output, device=resolve_device(args.device),
                          workers=args.workers, top_k=args.top_k, slide_mpp=args.slide_mpp)
    for r in rows:
        extra = f" ({r['error']})" if r.get("error") else ""
        print(f"{r['slide']}: {r['status']} p={r['probability']} label={r['label']} tiles={r['n_tiles']}{extra}")
    print(f"predictions: {args.output / 'predictions.csv'}")
    return 1 if any(str(r["status"]).startswith("error") for r in rows) else 0
