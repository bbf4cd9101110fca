"""Train a segmentation model: ``medseg train --config CFG [--set key=value ...] [--resume]``, or
from a plan: ``medseg train --plan plan.yaml [--configuration 3d_fullres] [--fold F|all] [--out DIR]``.

Writes a model bundle to ``output.dir`` (weights, bundle.yaml, resolved config, curves); from a
plan, one bundle per fold in ``OUT/fold_F``. ``--fold all`` trains every fold in turn (a finished
fold is skipped, an interrupted one continues with ``--resume``) and then makes ``OUT`` itself a
bundle holding all folds, whose prediction is the mean of the folds' probabilities.
Under ``torchrun --nproc_per_node N -m medseg train ...`` it trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="training config (YAML), e.g. configs/seg3d/hippocampus_unet.yaml")
    src.add_argument("--plan", type=Path, help="plan written by medseg plan (trains one of its configurations)")
    p.add_argument("--configuration", default="3d_fullres",
                   help="with --plan: configuration to train (default: %(default)s)")
    p.add_argument("--fold", default="0", help="with --plan: validation fold 0..4, or 'all' for every fold in turn "
                   "(default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="with --plan: output folder (default: runs/DATASET/CONFIGURATION); folds go in fold_F/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=10 --set data.fold=1")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output.dir")


def _plan_configs(args: argparse.Namespace) -> list[dict]:
    from medseg import config as cfgmod
    from medseg.errors import ConfigError
    from medseg.training.from_plan import check_plan, config_from_plan

    plan = cfgmod.load_yaml(args.plan)
    check_plan(plan, args.configuration)
    out = args.out or Path("runs") / str(plan["dataset"]["name"]) / args.configuration
    if args.fold == "all":
        folds: list = list(range(5))
    else:
        try:
            folds = [int(args.fold)]
        except ValueError:
            raise ConfigError(f"--fold must be an integer or 'all', got {args.fold!r}") from None
    return [cfgmod.apply_overrides(config_from_plan(plan, args.configuration, fold=f, out_dir=out), args.overrides)
            for f in folds]


def _finished(cfg: dict) -> bool:
    from medseg.bundle import META_FILE, read_meta
    from medseg.training.config import resolve_config

    d = Path(cfg["output"]["dir"])
    if not (d / META_FILE).is_file():
        return False
    tr = read_meta(d).get("training", {})
    return int(tr.get("epochs_done", 0)) >= int(resolve_config(cfg)["training"]["epochs"])


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.training import train

    if args.config is not None:
        cfgs = [cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)]
    else:
        cfgs = _plan_configs(args)
    for cfg in cfgs:
        if len(cfgs) > 1 and _finished(cfg):
            print(json.dumps({"bundle": cfg["output"]["dir"], "skipped": "finished"}))
            continue
        summary = train(cfg, resume=args.resume)
        if summary.get("rank", 0) == 0:
            last = summary.get("last", {})
            print(json.dumps({"bundle": summary["bundle"], "epochs": summary["epochs"], "best": summary["best"],
                              "val_dice_mean": last.get("val_dice_mean")}))
    if args.plan is not None and int(os.environ.get("RANK", "0")) == 0:
        from medseg.inference.oof import write_oof
        from medseg.training.fold_bundle import write_fold_ensemble

        for cfg in cfgs:            # cases already predicted are kept, so a rerun only finishes what was cut short
            write_oof(cfg["output"]["dir"], device=cfg.get("training", {}).get("device", "auto"))
        if args.fold == "all":
            run_dir = Path(cfgs[0]["output"]["dir"]).parent
            write_fold_ensemble(run_dir, [int(c["data"]["fold"]) for c in cfgs])
            print(json.dumps({"ensemble_bundle": str(run_dir), "folds": [c["data"]["fold"] for c in cfgs]}))
    return 0
