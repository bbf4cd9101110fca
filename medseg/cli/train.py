"""Train a segmentation model: ``medseg train --config CFG [--set key=value ...] [--resume]``.

Writes a model bundle to ``output.dir`` (weights, bundle.yaml, resolved config, curves).
Under ``torchrun --nproc_per_node N -m medseg train ...`` it trains with DDP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="training config (YAML), e.g. "
                   "configs/seg3d/hippocampus_unet.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=10 --set data.fold=1")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output.dir")


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.training import train

    cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
    summary = train(cfg, resume=args.resume)
    if summary.get("rank", 0) == 0:
        last = summary.get("last", {})
        print(json.dumps({"bundle": summary["bundle"], "epochs": summary["epochs"], "best": summary["best"],
                          "val_dice_mean": last.get("val_dice_mean")}))
    return 0
