"""Score a cohort and write ``metrics.csv``, ``summary.json`` and ``report.html`` into a folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.fsutil import output_lock, remove_stale_tmp, safe_join
from medseg.metrics.aggregate import BOOTSTRAP_SEED, N_BOOT, summarize_rows
from medseg.metrics.cohort import CohortResult, evaluate_cohort
from medseg.metrics.evaluate import MODES
from medseg.report.html import write_html
from medseg.report.writers import write_json, write_metrics_csv

log = logging.getLogger("medseg.report")


def write_evaluation(result: CohortResult, out_dir: str | Path, *, meta: dict[str, Any]) -> dict[str, Path]:
    """Write the three outputs (each atomically). Returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "summary.json", "report.html"):
        for p in remove_stale_tmp(safe_join(out, name)):  # left by a run that was killed mid-write
            log.info("removed %s, a temporary file of an interrupted run", p.name)
    summary = summarize_rows(result.rows, n_boot=N_BOOT)
    meta = dict(meta, cases=result.cases, pred_only=result.pred_only, ref_only=result.ref_only,
                failed=result.failed, n_boot=N_BOOT, seed=BOOTSTRAP_SEED)
    paths = {
        "metrics_csv": write_metrics_csv(result.rows, safe_join(out, "metrics.csv")),
        "summary": write_json({"meta": meta, "labels": summary}, safe_join(out, "summary.json")),
        "report": write_html(result.rows, summary, safe_join(out, "report.html"), meta=meta),
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
) -> tuple[CohortResult, dict[str, Path]]:
    """:func:`medseg.metrics.cohort.evaluate_cohort` followed by :func:`write_evaluation`, holding the
    output folder's lock (:func:`medseg.fsutil.output_lock`, the one ``predict`` takes) throughout: two
    runs into one folder cannot mix their files (the second fails with code ``busy``), and a folder
    that cannot be written is a one-line error before any case is scored."""
    if mode not in MODES:
        from medseg.errors import ConfigError

        raise ConfigError(f"unknown metric mode '{mode}' (use one of {', '.join(MODES)})", code="bad_mode")
    with output_lock(out_dir):
        return _evaluate_and_write(pred, ref, out_dir, labels=labels, label_names=label_names,
                                   tolerance_mm=tolerance_mm, mode=mode, workers=workers, progress=progress,
                                   executor=executor)


def _evaluate_and_write(pred, ref, out_dir, *, labels, label_names, tolerance_mm, mode, workers, progress,
                        executor) -> tuple[CohortResult, dict[str, Path]]:
    result = evaluate_cohort(pred, ref, labels=labels, label_names=label_names, tolerance_mm=tolerance_mm,
                             mode=mode, workers=workers, progress=progress, executor=executor)
    tol = {str(k): v for k, v in tolerance_mm.items()} if isinstance(tolerance_mm, Mapping) else tolerance_mm
    meta = {"pred": str(pred), "ref": str(ref), "mode": mode, "mode_description": MODES[mode],
            "hd_percentile": 95, "nsd_tolerance_mm": tol, "labels": result.labels,
            "label_names": {str(k): v for k, v in (label_names or {}).items()}}
    paths = write_evaluation(result, out_dir, meta=meta)
    log.info("scored %d cases (%d failed); report at %s", len(result.cases), len(result.failed), paths["report"])
    return result, paths
