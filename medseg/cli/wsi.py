"""Whole-slide images: ``medseg wsi info|tile|features|train|predict``.

``medseg wsi info SLIDE`` prints levels, mpp, objective power and associated images.
``medseg wsi tile SLIDE... --output DIR --mpp 0.5 --tile-size 256`` writes ``DIR/<slide>/`` with
``tiles.h5`` (coordinates + metadata), ``mask.png`` (tissue and grid over the thumbnail) and
``summary.json`` (status, tile count, tissue area in mm^2); a bad slide is reported, the rest go on.
``medseg wsi features --tiles DIR --output DIR --encoder tile_resnet18 --weights W.safetensors``
encodes the tiles (resumable per slide); without ``--weights`` the encoder is random only when asked
for with ``--random-encoder --seed N``. ``medseg wsi train --config configs/wsi/train_demo.yaml``
runs the stages tile, features, MIL and BCL. ``medseg wsi predict --model OUT/model --input
SLIDES... --output DIR`` writes predictions.csv, heatmaps and top-attended tiles.
``medseg wsi evaluate --pred predictions.csv --labels labels.csv --output DIR`` writes ROC and PR
curves, AUC with a bootstrap CI and the confusion matrix at a threshold (given, or chosen on the
validation split); exit 1 when a slide is left out (listed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    from medseg.cli.common import add_output

    sub = p.add_subparsers(dest="wsi_cmd", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="print levels, mpp, objective power, associated images")
    info.add_argument("slides", nargs="+", type=Path, help="slide files (any OpenSlide format, TIFF, PNG, JPEG)")
    info.add_argument("--mpp", type=float, default=None, help="um/px for slides without resolution metadata")
    info.add_argument("--json", action="store_true", help="print JSON")

    tile = sub.add_parser("tile", help="tissue mask and tile coordinates for one or many slides")
    tile.add_argument("slides", nargs="+", type=Path, help="slide files or folders of slides")
    add_output(tile, "output folder: one sub-folder per slide (tiles.h5, mask.png, summary.json)")
    tile.add_argument("--mpp", type=float, default=0.5, help="tile resolution, um/px")
    tile.add_argument("--tile-size", type=int, default=256, help="tile side in pixels at --mpp")
    tile.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tiles")
    tile.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a tile")
    tile.add_argument("--mode", default="auto", choices=["auto", "brightfield", "fluorescence"],
                      help="tissue detection: brightfield (Otsu on saturation), fluorescence (on intensity), "
                      "or auto (guessed per slide)")
    tile.add_argument("--min-area-mm2", type=float, default=0.01, help="drop tissue pieces smaller than this")
    tile.add_argument("--slide-mpp", type=float, default=None,
                      help="um/px of the slides when their metadata lacks it (plain images)")

    _add_ml_parsers(sub)

    ev = sub.add_parser("evaluate", help="slide-level ROC / PR curves, AUC with CI, confusion matrix")
    ev.add_argument("--pred", type=Path, required=True, help="predictions.csv of 'medseg wsi predict'")
    ev.add_argument("--labels", type=Path, required=True, help="slide_id,label[,split] CSV")
    add_output(ev, "output folder (report.html, ROC and PR curves)")
    ev.add_argument("--threshold", type=float, default=None, help="positive when probability >= this (default 0.5)")
    ev.add_argument("--choose-threshold", default=None, metavar="RULE",
                    help="choose the threshold on the split=val slides: youden, sens:0.9 or spec:0.9")
    ev.add_argument("--classes", default=None,
                    help="class names negative,positive as written in the labels CSV (default: labels 0 and 1)")


def run(args: argparse.Namespace) -> int:
    if args.wsi_cmd == "info":
        return _info(args)
    return {"tile": _tile, "features": _features, "train": _train, "predict": _predict,
            "evaluate": _evaluate}[args.wsi_cmd](args)


def _evaluate(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input, check_output_dir
    from medseg.errors import ConfigError
    from medseg.metrics.params import parse_names
    from medseg.report.slides import write_slide_report
    from medseg.wsi.evaluate import evaluate_slide_predictions

    check_input(args.pred, "--pred", kind="file")
    check_input(args.labels, "--labels", kind="file")
    check_output_dir(args.output)
    if args.threshold is not None and args.choose_threshold:
        raise ConfigError("give --threshold or --choose-threshold, not both", code="bad_params")
    classes = parse_names(args.classes) or None
    if classes is not None and len(classes) != 2:
        raise ConfigError("--classes needs two names: negative,positive", code="bad_params")
    result = evaluate_slide_predictions(args.pred, args.labels, threshold=args.threshold,
                                        choose=args.choose_threshold, classes=classes)
    paths = write_slide_report(result, args.output)
    res = result["test"]
    t = res["at_threshold"]
    lo, hi = res["auc_ci95"]
    print(f"{res['n']} slides: AUC {res['auc']:.4f} [{lo:.4f}, {hi:.4f}], AP {res['average_precision']:.4f}")
    print(f"threshold {t['threshold']:.6g} ({result['threshold_source']}): accuracy {t['accuracy']:.4f}, "
          f"sensitivity {t['sensitivity']:.4f}, specificity {t['specificity']:.4f}")
    for s, why in result["left_out"].items():
        print(f"  left out: {s}: {why}")
    print(f"report: {paths['report']}")
    return 1 if result["left_out"] else 0


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


def _slide_list(items: list[Path], option: str) -> list[Path]:
    """Slide files of the arguments (folders expanded); a missing path or no slide at all: ConfigError (exit 2)."""
    from medseg.cli.common import check_input
    from medseg.errors import ConfigError
    from medseg.io.wsi import SLIDE_EXTENSIONS

    slides: list[Path] = []
    for p in items:
        check_input(p, option)
        slides += sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_EXTENSIONS) if p.is_dir() else [p]
    if not slides:
        raise ConfigError(f"{option}: no slide files in {', '.join(str(p) for p in items)} (extensions: "
                          f"{', '.join(sorted(SLIDE_EXTENSIONS))})", code="no_slides")
    return slides


def _tile(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_output_dir
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    slides = _slide_list(list(args.slides), "slides")
    check_output_dir(args.output)

    p = TilingParams(mpp=args.mpp, tile_size=args.tile_size, overlap=args.overlap, min_tissue=args.min_tissue,
                     mode=args.mode, min_area_mm2=args.min_area_mm2, slide_mpp=args.slide_mpp)
    rows = tile_slides(slides, args.output, p)
    from medseg.fsutil import atomic_write_text

    atomic_write_text(args.output / "tiling.json", json.dumps(rows, indent=1))
    for r in rows:
        if r["status"].startswith("error"):
            print(f"{r['slide']}: {r['status']} - {r['error']}")
        else:
            print(f"{r['slide']}: {r['status']}, {r['n_tiles']} tiles, tissue {r['tissue_area_mm2']:.2f} mm^2")
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


def _add_ml_parsers(sub) -> None:
    from medseg.cli.common import DEVICE_HELP, add_backend_arg, add_output

    f = sub.add_parser("features", help="encode the tiles of tiled slides (resumable per slide)")
    f.add_argument("--tiles", type=Path, required=True, help="output folder of 'medseg wsi tile'")
    add_output(f, "output folder: features/<slide>/features.h5 per slide")
    f.add_argument("--encoder", default="tile_resnet18", help="registered tile encoder")
    f.add_argument("--weights", type=Path, default=None,
                   help="encoder weights (.safetensors, .pt or .pth; torchvision / timm layouts for resnet50_trunc, "
                        "vit_small_patch16, vit_base_patch16; default: none, then --random-encoder is needed)")
    f.add_argument("--random-encoder", action="store_true",
                   help="no weights: encode with random weights initialised from --seed (recorded in the features)")
    f.add_argument("--seed", type=int, default=None, help="seed of --random-encoder (default: none)")
    f.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass")
    f.add_argument("--workers", type=int, default=2, help="worker processes reading tiles (DataLoader workers)")
    f.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_backend_arg(f, "tile encoder (one converted network per tile size)")
    f.add_argument("--slide-mpp", type=float, default=None,
                   help="um/px of the slides when their metadata lacks it (default: from the slide)")
    from medseg.executors import add_executor_args

    add_executor_args(f)

    t = sub.add_parser("train", help="tiling, features, MIL and BCL as pipeline stages from a YAML config")
    t.add_argument("--config", type=Path, required=True,
                   help="pipeline config (YAML), e.g. configs/wsi/train_demo.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set output=out/wsi2")

    p = sub.add_parser("predict", help="slide probabilities, attention heatmaps and top tiles")
    p.add_argument("--model", type=Path, required=True, help="bundle folder written by 'medseg wsi train'")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="slide files or folders")
    add_output(p, "output folder (predictions.csv, per slide heatmap.png and top tiles)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--workers", type=int, default=2, help="worker processes reading tiles (DataLoader workers)")
    p.add_argument("--top-k", type=int, default=8, help="top-attended tiles saved per slide")
    p.add_argument("--slide-mpp", type=float, default=None,
                   help="um/px of the slides when their metadata lacks it (default: from the slide)")


def _features(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input, check_output_dir
    from medseg.device import resolve_device
    from medseg.errors import ConfigError
    from medseg.executors import spec_from_args
    from medseg.inference.backends import encoder_backend
    from medseg.wsi.features import EncoderSpec, extract_features_batch

    check_input(args.tiles, "--tiles", kind="folder")
    check_input(args.weights, "--weights", kind="file")
    check_output_dir(args.output)
    if not any(args.tiles.glob("*/tiles.h5")):
        raise ConfigError(f"--tiles {args.tiles}: no tiled slides (SLIDE/tiles.h5); run medseg wsi tile first",
                          code="no_slides")
    ex = spec_from_args(args)
    if args.weights is not None and (args.random_encoder or args.seed is not None):
        raise ConfigError("--weights and --random-encoder/--seed exclude each other")
    if args.weights is None and not (args.random_encoder and args.seed is not None):
        raise ConfigError("no --weights given; a tile encoder needs its trained weights (README: whole-slide "
                          "images), or --random-encoder --seed N to encode with random weights on purpose")
    spec = EncoderSpec(name=args.encoder, weights=str(args.weights) if args.weights else None,
                       seed=args.seed if args.weights is None else None)
    if spec.weights is None:
        print(f"note: random encoder weights (seed {spec.seed}): features for testing the pipeline, not for diagnosis")
    # on Ray each actor resolves --device itself (a CPU head node may drive GPU workers)
    dev = resolve_device(args.device) if ex.is_local else args.device
    # locally a backend that cannot run here fails now, before any slide (exit 2); Ray workers check their own
    prepare = encoder_backend(args.backend, batch=args.batch_size, device=dev if ex.is_local else None)
    rows = extract_features_batch(args.tiles, args.output, spec, device=dev, batch_size=args.batch_size,
                                  workers=args.workers, slide_mpp=args.slide_mpp, executor=ex, prepare=prepare)
    for r in rows:
        print(json.dumps(r))
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


def _train(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.cli.common import check_input
    from medseg.pipeline import run_pipeline

    check_input(args.config, "--config", kind="file")
    cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
    ctx = run_pipeline(cfg, config_path=args.config.resolve())
    for name, res in ctx.results.items():
        if name.startswith("_"):
            continue
        short = {k: v for k, v in (res or {}).items() if k not in ("rows",)}
        print(f"{name}: {json.dumps(short, default=str)[:600]}")
    print(f"model bundle: {ctx.output_dir / 'model'}")
    from medseg.cli.run import report_failures

    return report_failures({k: v for k, v in ctx.results.items() if not k.startswith("_")})


def _predict(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input, check_output_dir
    from medseg.device import resolve_device
    from medseg.wsi.predict import predict_slides

    check_input(args.model, "--model", kind="folder")
    slides = _slide_list(list(args.input), "--input")
    check_output_dir(args.output)
    dev = resolve_device(args.device)
    from medseg.wsi.bundle import bundle_note

    note = bundle_note(args.model)
    if note:
        print(f"model note: {note}")
    rows = predict_slides(args.model, slides, args.output, device=dev,
                          workers=args.workers, top_k=args.top_k, slide_mpp=args.slide_mpp)
    for r in rows:
        extra = f" ({r['error']})" if r.get("error") else ""
        print(f"{r['slide']}: {r['status']} p={r['probability']} label={r['label']} tiles={r['n_tiles']}{extra}")
        if r["status"] == "ok":
            print(f"  attention heatmap: {args.output / r['slide'] / 'heatmap.png'}")
    print(f"predictions: {args.output / 'predictions.csv'}")
    return 1 if any(str(r["status"]).startswith("error") for r in rows) else 0
