"""Multiple-instance learning on bags of feature vectors.

``medseg mil cv --data musk1.csv --folds 10 --repeats 5 --seed 0 --output out/musk1`` runs repeated
stratified k-fold cross-validation of an aggregator (default: the gated attention-MIL defaults of
``configs/wsi/mil.yaml``), prints accuracy and AUC, and writes ``OUT/summary.json`` (means,
standard deviations, 95 % t-intervals over folds and the per-fold values) plus the resolved config.
Data: CSV (column 0 bag label, column 1 bag id, the rest features) or Andrews-style ``.mat``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="mil_cmd", metavar="COMMAND", required=True)
    cv = sub.add_parser("cv", help="repeated k-fold cross-validation on a bag data set")
    cv.add_argument("--data", type=Path, required=True, help="bag file (.csv or .mat)")
    from medseg.cli.common import DEVICE_HELP, add_output

    cv.add_argument("--folds", type=int, default=10, help="folds of the stratified k-fold cross-validation")
    cv.add_argument("--repeats", type=int, default=1, help="repeats of the k-fold split (each reshuffled)")
    cv.add_argument("--seed", type=int, default=0, help="seed of the splits and the model initialisation")
    add_output(cv, "output folder (summary.json, config.resolved.yaml)")
    cv.add_argument("--config", type=Path, default=None, help="YAML with a 'mil' section (default: built-in)")
    cv.add_argument("--model", default=None,
                    help="aggregator: attention_mil, gated_attention_mil, mean_mil or max_mil (default: the "
                    "config's, else gated_attention_mil)")
    cv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training key, e.g. --set epochs=40 or --set ensemble=1")
    cv.add_argument("--select-epochs", type=int, nargs="+", default=None, metavar="E",
                    help="choose the epoch count among these by an inner CV inside each training fold "
                    "(default: off, the config's fixed epochs)")
    cv.add_argument("--select-grid", choices=["default", "off"], default=None,
                    help="choose model, weight decay and epochs (the default grid) by inner CV inside each "
                         "training fold, one-standard-error rule; YAML 'select_grid' sets other grids "
                         "(default: the config's, else off)")
    cv.add_argument("--bagging", action="store_true",
                    help="average the networks trained on each inner fold's training part instead of one refit on "
                         "all the training bags (inner_folds x ensemble networks per fold; YAML 'bagging')")
    cv.add_argument("--inner-folds", type=int, default=None, help="folds of that inner CV (default 3)")
    cv.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: %(default)s)")


def _load_cfg(args: argparse.Namespace):
    from medseg import config as cfgmod
    from medseg.mil.fit import MILTrainConfig

    raw: dict = {}
    if args.config is not None:
        doc = cfgmod.load_yaml(args.config)
        raw = dict(doc.get("mil", doc))
    raw = cfgmod.apply_overrides(raw, args.overrides)
    if args.model:
        raw["model"] = args.model
    if args.select_epochs:
        raw["select_epochs"] = list(args.select_epochs)
    if args.select_grid is not None:
        raw["select_grid"] = "default" if args.select_grid == "default" else {}
    if args.inner_folds is not None:
        raw["inner_folds"] = args.inner_folds
    if args.bagging:
        raw["bagging"] = True
    return MILTrainConfig.from_dict(raw)


def _progress_printer(every_s: float = 5.0):
    """A progress callback printing ``done/total``, elapsed time and an estimate of the time left
    (elapsed / done * remaining) to stderr, at most every ``every_s`` seconds and at the end."""
    import sys

    last = [-every_s]

    def show(done: float, total: int, elapsed: float) -> None:
        if elapsed - last[0] < every_s and done < total:
            return
        last[0] = elapsed
        left = elapsed / max(done, 1) * (total - done)
        print(f"progress {done:.0f}/{total} ({100 * done / max(total, 1):.0f}%), {elapsed:.0f} s, "
              f"about {left:.0f} s left", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.cli.common import check_input, check_output_dir
    from medseg.device import resolve_device
    from medseg.errors import InputError
    from medseg.fsutil import atomic_write_text
    from medseg.mil.bags import load_bags
    from medseg.mil.crossval import cross_validate

    check_input(args.data, "--data", kind="file")
    check_output_dir(args.output)
    cfg = _load_cfg(args)
    dev = resolve_device(args.device)
    bags = load_bags(args.data)

    def partial(s: dict) -> None:  # repeats done so far, in case the run is stopped
        args.output.mkdir(parents=True, exist_ok=True)   # made once there is something to write
        atomic_write_text(args.output / "summary.partial.json", json.dumps({**s, "data": str(args.data)}, indent=1))

    try:
        summary = cross_validate(bags, cfg, folds=args.folds, repeats=args.repeats, seed=args.seed, device=dev,
                                 on_repeat=partial,
                                 progress=_progress_printer() if getattr(args, "verbosity", 0) >= 0 else None)
    except InputError as exc:   # too few bags for the folds: name the data file
        if exc.path is not None:
            raise
        raise InputError(exc.problem, path=args.data, code=exc.code) from None
    summary["data"] = str(args.data)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "summary.json", json.dumps(summary, indent=1))
    cfgmod.save_yaml({"mil": summary["config"]}, args.output / "config.resolved.yaml")
    lo, hi = summary["accuracy_ci95"]
    alo, ahi = summary["auc_ci95"]
    print(f"{args.data.name}: {len(bags)} bags ({summary['n_positive']} positive), {cfg.model}, "
          f"{args.folds}-fold x {args.repeats}")
    print(f"accuracy {summary['accuracy_mean']:.3f} +- {summary['accuracy_std']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    print(f"AUC      {summary['auc_mean']:.3f} +- {summary['auc_std']:.3f} (95% CI {alo:.3f}-{ahi:.3f})")
    if cfg.select_grid:
        print(f"configurations chosen by inner {cfg.inner_folds}-fold CV (count of outer folds):")
        for c, n in summary["configs_chosen"].items():
            print(f"  {n:3d}  {c}")
    if cfg.bagging:
        err = [p["inner_error"] for p in summary["per_fold"] if isinstance(p.get("inner_error"), float)]
        print(f"bagging: {cfg.inner_folds} x {cfg.ensemble} networks per training fold"
              + (f", inner out-of-fold error {sum(err) / len(err):.3f}" if err else ""))
    if cfg.select_epochs:
        print(f"epochs chosen by inner {cfg.inner_folds}-fold CV (count of outer folds): {summary['epochs_chosen']}")
    if "instance_auc_mean" in summary:
        print(f"instance AUC of the attention (positive bags) {summary['instance_auc_mean']:.3f} "
              f"+- {summary['instance_auc_std']:.3f}")
    print(f"summary: {args.output / 'summary.json'}")
    return 0
