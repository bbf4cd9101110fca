"""Choose between configurations trained with ``medseg train --plan ... --fold all``:
``medseg find-best RUN [RUN ...] [--output best.yaml]``.

Every run alone and every pair (mean of the two runs' probabilities) is scored on the pooled
out-of-fold predictions - each case predicted by the fold that held it out - by the mean over
labels of the per-label mean Dice (:func:`medseg.training.crossval.find_best_configuration`).
Prints the ranking and writes it as YAML; a tie goes to the single configuration.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="run folders of --fold all (each with fold_0 .. fold_4)")
    p.add_argument("--folds", default="0,1,2,3,4", help="folds to pool (default: %(default)s)")
    from medseg.cli.common import add_output

    add_output(p, "ranking to write (default: best.yaml beside the runs)", required=False)


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.cli.common import check_input, check_output_file
    from medseg.errors import ConfigError
    from medseg.training.crossval import find_best_configuration

    for r in args.runs:
        check_input(r, "run folder", kind="folder")
    out = args.output or args.runs[0].parent / "best.yaml"
    check_output_file(out)
    try:
        folds = [int(f) for f in args.folds.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--folds must be integers separated by commas, got {args.folds!r}") from None
    names = [r.name for r in args.runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs share a folder name ({', '.join(names)}); the ranking names runs by folder")
    result = find_best_configuration(dict(zip(names, args.runs)), folds)
    result["runs"] = {n: str(r) for n, r in zip(names, args.runs)}
    cfgmod.save_yaml(result, out)
    print(f"{result['cases']} out-of-fold cases, labels {result['labels']}")
    for r in result["ranking"]:
        print(f"  {' + '.join(r['members']):<30} mean Dice {r['mean_dice']:.4f}  per label {r['dice']}")
    print(f"best: {' + '.join(result['best'])}; ranking written to {out}")
    return 0
