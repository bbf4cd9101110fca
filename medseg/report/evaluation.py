"""Score a cohort and write ``metrics.csv``, ``summary.json`` and ``report.html`` into a folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.fsutil import output_lock, remove_stale_tmp, safe_join
from medseg.metrics.aggregate import BOOTSTRAP_SEED, N_BOOT, summarize_rows
from medseg.metrics.cohort import FAILED_POLICIES, CohortResult, evaluate_cohort
from medseg.metrics.evaluate import MODES
from medseg.metrics.label_metrics import EMPTY_REFERENCE
from medseg.report.html import write_html
from medseg.report.writers import write_json, write_metrics_csv

log = logging.getLogger("medseg.report")


def write_evaluation(result: CohortResult, out_dir: str | Path, *, meta: dict[str, Any],
                     images: str | Path | None = None, files: dict[str, tuple[Path, Path]] | None = None,
                     pixel_spacing_mm: Sequence[float] | None = None, binary_2d: bool = True) -> dict[str, Path]:
    """Write the three outputs (each atomically). Returns their paths.

    With ``files`` (case -> (prediction, reference)): also one page per case under ``cases/`` with
    slices and contours (over the images of ``images`` when given) and the worst / median / best
    cases of each label in the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "summary.json", "report.html"):
        for p in remove_stale_tmp(safe_join(out, name)):  # left by a run that was killed mid-write
            log.info("removed %s, a temporary file of an interrupted run", p.name)
    summary = summarize_rows(result.rows, n_boot=N_BOOT, metrics=result.metrics)
    meta = dict(meta, cases=result.cases, pred_only=result.pred_only, ref_only=result.ref_only,
                failed=result.failed, n_boot=N_BOOT, seed=BOOTSTRAP_SEED, metrics=result.metrics,
                empty_reference=result.empty_reference,
                empty_reference_description=EMPTY_REFERENCE[result.empty_reference],
                failed_policy=result.failed_policy, failed_policy_description=FAILED_POLICIES[result.failed_policy])
    links: dict[str, str] = {}
    picks = ""
    if files is not None:
        from medseg.report.case_pages import write_case_pages

        links, picks = write_case_pages(result.rows, result.labels, result.metrics, files, images, out,
                                        pixel_spacing=pixel_spacing_mm, binary_2d=binary_2d)
        meta["images"] = str(images) if images is not None else None
    paths = {
        "metrics_csv": write_metrics_csv(result.rows, safe_join(out, "metrics.csv"), metrics=result.metrics),
        "summary": write_json({"meta": meta, "labels": summary}, safe_join(out, "summary.json")),
        "report": write_html(result.rows, summary, safe_join(out, "report.html"), meta=meta, extra_html=picks,
                             case_pages=links),
    }
    return paths


def run_evaluation(
    pred: str | Path,
    ref: str | Path,
    out_dir: str | Path,
    *,
    labels: Sequence[int] | None = None,
    label_names: Mapping[int, str] | None = None,
    tolerance_mm: float | Mapping[int, float] = 1.0,
    mode: str = "surface-distance",
    workers: int = 1,
    progress: bool = True,
    executor=None,
    metrics: Sequence[str] | None = None,
    empty_reference: str = "score",
    failed: str = "worst",
    pixel_spacing_mm: Sequence[float] | None = None,
    binary_2d: bool = True,
    images: str | Path | None = None,
    case_pages: bool = False,
) -> tuple[CohortResult, dict[str, Path]]:
    """:func:`medseg.metrics.cohort.evaluate_cohort` followed by :func:`write_evaluation`
    (``images`` or ``case_pages=True``: case pages with slices and contours, see there), holding the
    output folder's lock (:func:`medseg.fsutil.output_lock`, the one ``predict`` takes) throughout: two
    runs into one folder cannot mix their files (the second fails with code ``busy``), and a folder
    that cannot be written is a one-line error before any case is scored."""
    if mode not in MODES:
        from medseg.errors import ConfigError

        raise ConfigError(f"unknown metric mode '{mode}' (use one of {', '.join(MODES)})", code="bad_mode")
    with output_lock(out_dir):
        result = evaluate_cohort(pred, ref, labels=labels, label_names=label_names, tolerance_mm=tolerance_mm,
                                 mode=mode, workers=workers, progress=progress, executor=executor, metrics=metrics,
                                 empty_reference=empty_reference, failed=failed, pixel_spacing_mm=pixel_spacing_mm,
                                 binary_2d=binary_2d)
        tol = {str(k): v for k, v in tolerance_mm.items()} if isinstance(tolerance_mm, Mapping) else tolerance_mm
        meta = {"pred": str(pred), "ref": str(ref), "mode": mode, "mode_description": MODES[mode],
                "hd_percentile": 95, "nsd_tolerance_mm": tol, "labels": result.labels,
                "label_names": {str(k): v for k, v in (label_names or {}).items()}}
        files = None
        if images is not None or case_pages:
            from medseg.metrics.cohort import pair_cases

            files = {c: (p, r) for c, p, r in pair_cases(pred, ref)[0] if c not in result.failed}
        paths = write_evaluation(result, out_dir, meta=meta, images=images, files=files,
                                 pixel_spacing_mm=pixel_spacing_mm, binary_2d=binary_2d)
    log.info("scored %d cases (%d failed); report at %s", len(result.cases), len(result.failed), paths["report"])
    return result, paths
