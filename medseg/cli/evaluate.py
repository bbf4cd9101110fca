"""Score predictions against references: ``medseg evaluate --pred P --ref R --output DIR``.

P and R are files or folders; cases are paired by file name (without extension). Writes
DIR/metrics.csv (one row per case and label), DIR/summary.json and DIR/report.html. HD95 and NSD
follow DeepMind surface-distance's surfel-based definitions (``--mode monai`` reproduces MONAI's
voxel-based numbers instead). Empty cases are kept and flagged in the status column; unreadable
or mismatching cases are reported as errors and the others finish; they enter every mean with the
worst value of each metric (``--exclude-failed`` leaves them out, said in the summary).
``--metrics`` adds ASSD, directed mean distances, any HD percentile, surface overlaps, sensitivity,
specificity, precision and volumes; 2D masks (2D NIfTI, PNG/TIFF with ``--pixel-spacing-mm``) are
scored in 2D. ``--images DIR`` adds slices with contours (worst / median / best case per label, one
page per case). Two or more ``--pred`` give a paired comparison (DIR/<method>/ and DIR/comparison.*).

Exit status: 0 when every reference was scored, 1 when any case is missing or failed (after all
outputs are written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", type=Path, required=True, action="append",
                   help="prediction file or folder; give it twice or more for a paired comparison of methods "
                        "(the first is the baseline)")
    p.add_argument("--method-names", default=None,
                   help="names of the --pred methods in order, e.g. unet,nnunet (default: folder names)")
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
    p.add_argument("--metrics", default=None,
                   help="metrics to report, e.g. dice,assd,hd100,hd99,sensitivity,vol_diff or 'all' "
                        "(default dice,iou,hd95,nsd; see docs/metrics.md)")
    p.add_argument("--empty-reference", choices=["score", "nan"], default="score",
                   help="empty reference: 'score' (fixed values, default) or 'nan' (MONAI: left out of means)")
    p.add_argument("--exclude-failed", action="store_true",
                   help="leave failed and missing cases out of the means (default: they count with the worst value)")
    p.add_argument("--pixel-spacing-mm", default=None,
                   help="row,column spacing in mm of PNG/TIFF masks (required for them), e.g. 0.5,0.5")
    p.add_argument("--mask-labels", action="store_true",
                   help="read PNG/TIFF values as label numbers (default: binary masks, 0 and one other value)")
    p.add_argument("--images", type=Path, default=None,
                   help="folder of the images (case.nii.gz or case_0000.nii.gz): the report shows, per label, the "
                        "worst / median / best cases as slices through the largest error, one page per case")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes over cases (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from medseg.executors import add_executor_args

    add_executor_args(p)


def run(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input, check_output_dir
    from medseg.executors import spec_from_args
    from medseg.metrics.catalog import parse_metrics
    from medseg.metrics.params import parse_label_names, parse_labels, parse_pixel_spacing, parse_tolerances
    from medseg.report.evaluation import run_evaluation

    for pred in args.pred:
        check_input(pred, "--pred")
    check_input(args.ref, "--ref")
    check_input(args.images, "--images", kind="folder")
    check_output_dir(args.output)
    labels = parse_labels(args.labels)
    names = parse_label_names(args.label_names, labels)
    tol = parse_tolerances(args.nsd_tolerance_mm, labels)
    metrics = parse_metrics(args.metrics)
    pixel_spacing = parse_pixel_spacing(args.pixel_spacing_mm)
    spec = spec_from_args(args)
    if args.workers < 1:
        from medseg.errors import ConfigError

        raise ConfigError("--workers must be >= 1", code="bad_params")
    kwargs = dict(labels=labels, label_names=names, tolerance_mm=tol, mode=args.mode, workers=args.workers,
                  progress=not args.no_progress and getattr(args, "verbosity", 0) >= 0, executor=spec, metrics=metrics,
                  empty_reference=args.empty_reference, failed="exclude" if args.exclude_failed else "worst",
                  pixel_spacing_mm=pixel_spacing, binary_2d=not args.mask_labels, images=args.images)
    if len(args.pred) > 1:
        return _compare(args, kwargs)
    result, paths = run_evaluation(args.pred[0], args.ref, args.output, **kwargs)
    _print_result(result, args.exclude_failed)
    print(f"metrics: {paths['metrics_csv']}\nsummary: {paths['summary']}\nreport:  {paths['report']}")
    return 1 if result.failed else 0


def _print_result(result, exclude_failed: bool, prefix: str = "") -> None:
    print(f"{prefix}{len(result.cases)} cases, {len(result.labels)} labels, {len(result.failed)} failed, "
          f"{len(result.pred_only)} predictions without reference")
    for c, st in sorted(result.failed.items()):
        print(f"  {c}: {st}")
    for c in result.pred_only:
        print(f"  {c}: no reference (not scored)")
    if result.failed:
        how = ("left out of the means (--exclude-failed)" if exclude_failed
               else "counted in every mean with the worst value of each metric")
        print(f"  {len(result.failed)} failed or missing cases {how}")


def _compare(args: argparse.Namespace, kwargs: dict) -> int:
    from medseg.metrics.params import parse_names
    from medseg.report.comparison import run_comparison

    names = parse_names(args.method_names) or None
    results, comparison, paths = run_comparison(args.pred, args.ref, args.output, names=names, **kwargs)
    for name, res in results.items():
        _print_result(res, args.exclude_failed, prefix=f"{name}: ")
    excluded = False
    for comp in comparison["comparisons"]:
        print(f"{comp['method']} vs {comparison['baseline']}: {comp['n_paired_cases']} paired cases")
        for c, why in comp["excluded"].items():
            excluded = True
            print(f"  left out of the paired statistics: {c} ({why})")
    print(f"comparison: {paths['comparison_csv']}\n            {paths['comparison_html']}")
    return 1 if excluded or any(r.failed for r in results.values()) else 0
