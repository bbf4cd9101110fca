"""Score predictions against references: ``medseg evaluate --pred P --ref R --output DIR``.

P and R are files or folders; cases are paired by file name (without extension). Writes
DIR/metrics.csv (one row per case and label), DIR/summary.json and DIR/report.html. HD95 and NSD
follow DeepMind surface-distance's surfel-based definitions (``--mode monai`` reproduces MONAI's
voxel-based numbers instead). Empty cases are kept and flagged in the status column; unreadable
or mismatching cases are reported as errors and the others finish.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", type=Path, required=True, help="prediction file or folder")
    p.add_argument("--ref", type=Path, required=True, help="reference file or folder")
    from medseg.cli.common import add_output

    add_output(p, "output folder (metrics.csv, summary.json, report.html)")
    p.add_argument("--labels", default=None,
                   help="labels to score, e.g. 1,2 (default: every label > 0 in any reference or prediction)")
    p.add_argument("--label-names", default=None, metavar="1=NAME,2=NAME|FILE",
                   help="label names: 1=anterior,2=posterior (commas between pairs), names in --labels order, "
                   "or a file: a dataset.json (its 'labels') or a text file of N=NAME lines "
                   "(default: label_1, label_2 ...)")
    p.add_argument("--nsd-tolerance-mm", default="1.0",
                   help="NSD tolerance in mm: one value, or one per label in --labels order (e.g. 1,2.5) "
                   "(default: %(default)s)")
    p.add_argument("--mode", choices=["surface-distance", "monai"], default="surface-distance",
                   help="HD95/NSD definition: surfel-based surface-distance (default) or MONAI voxel-based")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes over cases (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from medseg.executors import add_executor_args

    add_executor_args(p)


def run(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input, check_output_dir
    from medseg.executors import spec_from_args
    from medseg.metrics.params import parse_label_names, parse_labels, parse_tolerances
    from medseg.report.evaluation import run_evaluation

    check_input(args.pred, "--pred")
    check_input(args.ref, "--ref")
    check_output_dir(args.output)
    labels = parse_labels(args.labels)
    names = parse_label_names(args.label_names, labels)
    tol = parse_tolerances(args.nsd_tolerance_mm, labels)
    spec = spec_from_args(args)
    if args.workers < 1:
        from medseg.errors import ConfigError

        raise ConfigError("--workers must be >= 1", code="bad_params")
    result, paths = run_evaluation(args.pred, args.ref, args.output, labels=labels, label_names=names,
                                   tolerance_mm=tol, mode=args.mode, workers=args.workers,
                                   progress=not args.no_progress, executor=spec)
    print(f"{len(result.cases)} cases, {len(result.labels)} labels, {len(result.failed)} failed, "
          f"{len(result.pred_only)} predictions without reference")
    for c, st in sorted(result.failed.items()):
        print(f"  {c}: {st}")
    for c in result.pred_only:
        print(f"  {c}: no reference (not scored)")
    print(f"metrics: {paths['metrics_csv']}\nsummary: {paths['summary']}\nreport:  {paths['report']}")
    return 0
