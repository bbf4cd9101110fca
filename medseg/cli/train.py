"""Train a segmentation model: ``medseg train --config CFG [--set key=value ...] [--resume]``, or
from a plan: ``medseg train --plan plan.yaml [--configuration 3d_fullres] [--fold F|all] [--out DIR]``,
or straight from a data set: ``medseg train --dataset DIR [--fold all]`` (plans it first, into
``OUT/plan.yaml``; a rerun reuses that plan).

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
    src.add_argument("--dataset", type=Path, help="data set folder (imagesTr/, labelsTr/, dataset.json): plan it "
                     "with the defaults for this machine, then train the plan")
    p.add_argument("--configuration", default="3d_fullres",
                   help="with --plan/--dataset: configuration to train (default: %(default)s)")
    p.add_argument("--fold", default="0",
                   help="with --plan/--dataset: validation fold 0..4, or 'all' for every fold in turn "
                   "(default: %(default)s)")
    from medseg.cli.common import add_output

    add_output(p, "with --plan/--dataset: output folder (default: runs/DATASET/CONFIGURATION); folds go in "
               "fold_F/; with --config: sets the config's output.dir", required=False)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=10 --set data.fold=1")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output.dir")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="with --fold all: train the folds one after another here (local, default) or in "
                   "parallel on a Ray cluster (ray: one task per fold, one GPU each where there are GPUs)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (auto, HOST:6379); default: start a one-machine cluster")
    p.add_argument("--cpus-per-fold", type=int, default=1,
                   help="with --executor ray on a cluster without GPUs: CPUs per fold (default: %(default)s)")


def _plan_of_dataset(args: argparse.Namespace) -> dict:
    """The plan of ``--dataset``: ``OUT/plan.yaml`` when a run there already made one, else a new plan
    for this machine (CUDA budget when a GPU is visible), written there before any training."""
    import logging

    from medseg import config as cfgmod
    from medseg.cli.plan import summary_text
    from medseg.device import resolve_device
    from medseg.training.plan_dataset import dataset_name, plan_dataset

    out = args.output or Path("runs") / dataset_name(args.dataset) / args.configuration
    path = out / "plan.yaml"
    if path.is_file():
        logging.getLogger("medseg.train").info("reusing the plan of this run: %s", path)
        return cfgmod.load_yaml(path)
    device = "cuda" if resolve_device("auto").type == "cuda" else "cpu"
    plan = plan_dataset(args.dataset, device=device)
    print(summary_text(plan))
    cfgmod.save_yaml(plan, path)
    print(f"plan written to {path}")
    return plan


def _plan_configs(args: argparse.Namespace) -> list[dict]:
    from medseg import config as cfgmod
    from medseg.errors import ConfigError
    from medseg.training.from_plan import check_plan, config_from_plan

    plan = _plan_of_dataset(args) if args.dataset is not None else cfgmod.load_yaml(args.plan)
    check_plan(plan, args.configuration)
    out = args.output or Path("runs") / str(plan["dataset"]["name"]) / args.configuration
    if args.fold == "all":
        folds: list = list(range(5))
    else:
        try:
            folds = [int(args.fold)]
        except ValueError:
            raise ConfigError(f"--fold must be an integer or 'all', got {args.fold!r}") from None
    return [cfgmod.apply_overrides(config_from_plan(plan, args.configuration, fold=f, out_dir=out), args.overrides)
            for f in folds]


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.executors import executor_spec
    from medseg.training.fold_jobs import run_folds

    spec = executor_spec(args.executor, args.ray_address)
    if not spec.is_local and (args.config is not None or args.fold != "all"):
        from medseg.errors import ConfigError

        raise ConfigError("--executor ray runs the folds of --fold all in parallel; use it with --plan or "
                          "--dataset and --fold all")
    from medseg.cli.common import check_input, check_output_dir

    check_input(args.config, "--config", kind="file")
    check_input(args.plan, "--plan", kind="file")
    check_input(args.dataset, "--dataset", kind="folder")
    if args.dataset is not None:
        check_output_dir(args.output or Path("runs"))
    if args.config is not None:
        cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
        if args.output is not None:      # the config's output.dir, as --set output.dir=DIR
            cfg = cfgmod.apply_overrides(cfg, [f"output.dir={args.output}"])
        cfgs = [cfg]
    else:
        cfgs = _plan_configs(args)
    from medseg.training.config import resolve_config

    for cfg in cfgs:      # before any data is read or a model built: every key, the output folder, the data
        resolve_config(cfg)
        check_output_dir((cfg.get("output") or {}).get("dir"), "output.dir")
        root = (cfg.get("data") or {}).get("root")
        if root is not None:
            check_input(root, "data.root", kind="folder")
    for summary in run_folds(cfgs, resume=args.resume, executor=spec, cpus_per_fold=args.cpus_per_fold):
        if summary.get("skipped"):
            print(json.dumps(summary))
        elif summary.get("rank", 0) == 0:
            last = summary.get("last", {})
            print(json.dumps({"bundle": summary["bundle"], "epochs": summary["epochs"], "best": summary["best"],
                              "val_dice_mean": last.get("val_dice_mean")}))
    if args.config is None and int(os.environ.get("RANK", "0")) == 0:
        from medseg.inference.oof import write_oof
        from medseg.training.fold_bundle import fold_mirror_axes, write_fold_ensemble

        for cfg in cfgs:            # cases already predicted are kept, so a rerun only finishes what was cut short
            write_oof(cfg["output"]["dir"], device=cfg.get("training", {}).get("device", "auto"),
                      tta_axes=fold_mirror_axes(cfg["output"]["dir"]))
        if args.fold == "all":
            run_dir = Path(cfgs[0]["output"]["dir"]).parent
            write_fold_ensemble(run_dir, [int(c["data"]["fold"]) for c in cfgs])
            print(json.dumps({"ensemble_bundle": str(run_dir), "folds": [c["data"]["fold"] for c in cfgs]}))
    return 0
