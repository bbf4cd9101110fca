"""Segment volumes with a model bundle: ``medseg predict --model NAME|PATH --input FILE|DIR --output DIR``.

Each case's label map is written to DIR/CASE.nii.gz on the input's own grid (same shape and
affine; NIfTI, NRRD/MHA and DICOM series folders are read). Outputs are written atomically and
recorded with their checksums in DIR/manifest.json: re-running the same command resumes,
skipping only cases whose outputs match the manifest; failed cases are retried. A bad case is
reported and the others finish; the exit code is 1 when any case failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered bundle name (e.g. hippocampus_unet) or bundle folder")
    p.add_argument("--input", type=Path, required=True,
                   help="a volume file, a DICOM series folder, or a folder of them")
    from medseg.cli.common import DEVICE_HELP, THREADS_HELP, add_backend_arg, add_output

    add_output(p, "output folder (label maps, manifest.json)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: %(default)s)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", nargs="?", const="0,1,2", default=None, metavar="AXES",
                     help="mirroring test-time augmentation; alone: all axes (8 passes), or axes e.g. 1,2 "
                          "(default: the bundle's own default, shown by medseg predict in manifest.json: "
                          "bundles trained with mirroring augmentation mirror at prediction, as nnU-Net)")
    tta.add_argument("--no-tta", action="store_true", help="no test-time augmentation, whatever the bundle says")
    p.add_argument("--tta-per-window", action="store_true",
                   help="with --tta: flip each batch of windows and average logits (nnU-Net's way, less memory) "
                        "instead of flipping the whole volume and averaging probabilities")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write DIR/CASE_probabilities.npz (K, z, y, x) on the input grid")
    p.add_argument("--probability-dtype", choices=["float16", "float32"], default="float16",
                   help="storage of --save-probabilities (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    add_backend_arg(p)
    p.add_argument("--workers", type=int, dest="threads_old", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", choices=["best", "last"], default="best",
                   help="best: model.safetensors, the best validation epoch (exported bundles such as the shipped "
                   "ones hold only these); last: last.safetensors (default: %(default)s)")
    p.add_argument("--folds", default=None, metavar="F,F",
                   help="of a fold-ensemble bundle, use only these folds, e.g. 0,2 (default: all of them)")
    p.add_argument("--no-postprocess", action="store_true", help="skip the bundle's post-processing rules")
    p.add_argument("--force", action="store_true",
                   help="predict cases the bundle's input guard refuses as another modality or body region "
                   "(checked before inference: e.g. a CT given to an MRI model); they are only warned about")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output-format", action="append", default=None, metavar="FMT[,FMT]",
                   help="formats to write besides CASE.nii.gz (always written): dicom-seg (DICOM SEG referencing "
                        "a DICOM input series), seg-nrrd (3D Slicer CASE.seg.nrrd); repeat or comma-separate")
    p.add_argument("--statistics", action="store_true",
                   help="per-label volume, intensity and bounding box: CASE_statistics.json and statistics.csv")
    p.add_argument("--preview", action="store_true", help="CASE_preview.png: three slices with the labels")
    from medseg.executors import add_executor_args

    add_executor_args(p)


def run(args: argparse.Namespace) -> int:
    from medseg.device import bound_heap, passive_thread_waits

    passive_thread_waits()   # first, before torch is imported: no spinning OpenMP threads beside the backend's
    bound_heap()    # large volumes' freed slabs go back to the system (peak memory of a CT: docs/benchmarks.md)
    from medseg.cli.common import check_input, check_output_dir
    from medseg.errors import ConfigError
    from medseg.inference.tta import tta_axes_from_text

    if args.threads_old is not None:   # before --threads, predict took CPU threads as --workers
        import logging

        logging.getLogger("medseg").warning("predict --workers is deprecated: it sets CPU threads, use --threads "
                                            "(--workers means worker processes in the other verbs)")
        args.threads = args.threads if args.threads is not None else args.threads_old
    check_input(args.input, "--input")
    check_output_dir(args.output)
    if args.input.is_dir():
        from medseg.io import list_cases

        if not list_cases(args.input):    # before the model is loaded
            raise ConfigError(f"--input {args.input}: no volumes in this folder (NIfTI, NRRD/MHA/MHD files or DICOM "
                              "series folders)", code="empty")
    tta = () if args.no_tta else (None if args.tta is None else tta_axes_from_text(args.tta))
    if not 0.0 <= args.overlap < 1.0:
        raise ConfigError(f"--overlap must be in [0, 1), got {args.overlap}", code="bad_params")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}", code="bad_params")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}", code="bad_params")
    folds = None
    if args.folds is not None:
        try:
            folds = sorted({int(f) for f in args.folds.split(",")})
        except ValueError:
            raise ConfigError(f"--folds must be fold numbers separated by commas, e.g. 0,2; got {args.folds!r}",
                              code="bad_params") from None
    from medseg.executors import spec_from_args
    from medseg.inference.cohort import run_predict

    spec = spec_from_args(args)

    report = run_predict(model=args.model, input_path=args.input, output=args.output, device=args.device,
                         tta_axes=tta, tta_mode="window" if args.tta_per_window else "volume",
                         overlap=args.overlap, batch_size=args.batch_size,
                         save_probabilities=args.save_probabilities, probability_dtype=args.probability_dtype,
                         workers=args.threads, weights=args.weights, postprocess=not args.no_postprocess,
                         progress=not args.no_progress and getattr(args, "verbosity", 0) >= 0, executor=spec,
                         folds=folds, force=args.force, output_formats=args.output_format,
                         statistics=args.statistics, preview=args.preview, backend=args.backend)
    print(summary_table(report, timings=getattr(args, "verbosity", 0) > 0))
    return 1 if report.failed else 0


def summary_table(report, *, timings: bool = False) -> str:
    """Counts, then one line per failed case (code and message); with ``timings`` (``-v``) where the time went."""
    lines = [f"{len(report.outcomes)} cases: {report.count('done')} predicted, {report.count('skipped')} already done, "
             f"{report.count('failed')} failed"]
    if report.failed:
        w = max(len(o.case_id) for o in report.failed)
        lines.append(f"  {'case'.ljust(w)}  error")
        for o in report.failed:
            err = o.error or {}
            msg = " ".join(str(err.get("message", "")).split())
            lines.append(f"  {o.case_id.ljust(w)}  {err.get('code', 'error')}: {msg}")
    bundle = (getattr(report, "record", None) or {}).get("bundle")
    if bundle:
        lines.append(f"model:    {bundle['path']} (sha256 {bundle['sha256']})")
    lines.append(f"manifest: {report.manifest_path}")
    run_timings = getattr(report, "timings", None) if timings else None
    if run_timings is not None and run_timings.rows:
        lines.append(f"{run_timings.summary()} (per case: {report.manifest_path.parent / 'timings.csv'})")
    return "\n".join(lines)
