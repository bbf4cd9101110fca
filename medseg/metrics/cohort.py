"""Scoring a cohort: pair prediction and reference files by name, score each pair, in parallel.

A case that cannot be scored (unreadable file, geometry mismatch, bad labels) gets rows with an
``error:<code>`` status for every label and the others go on. References without a prediction
get ``error:missing_pred`` rows (a missing prediction is a failure, not a skip); predictions
without a reference are listed in ``CohortResult.pred_only``.

Failed and missing cases count (``failed="worst"``, the default): their rows carry the worst value
of each metric (:func:`medseg.metrics.label_metrics.worst_values`: Dice/IoU/NSD 0, distances the
diagonal of the case's reference image, or the largest diagonal of the cohort when the reference
itself cannot be read) and so enter every mean and CI. ``failed="exclude"`` leaves them ``nan``
(out of the means; the summary says how many).

When no labels are given, every label > 0 found in any reference or prediction is scored for
every case: a worker scores the labels present in its case, and labels absent from both volumes
are filled in afterwards as ``both_empty`` (their values need nothing from the volumes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, InputError, MedsegError, status_of
from medseg.metrics.catalog import DEFAULT_METRICS
from medseg.metrics.evaluate import (
    LabelResult,
    error_rows,
    evaluate_case,
    is_2d,
    labels_present,
    tolerance_for,
    voxel_size_ml,
)
from medseg.metrics.label_metrics import EMPTY_REFERENCE, label_values, worst_values
from medseg.metrics.surface import image_diagonal_mm

FAILED_POLICIES = {
    "worst": "failed and missing cases enter every mean with the worst value of each metric",
    "exclude": "failed and missing cases are left out of the means (explicit --exclude-failed)",
}

log = logging.getLogger("medseg.metrics")


@dataclass
class CohortResult:
    """Rows (dicts with case, label, label_name, metrics, status...) plus pairing facts."""

    rows: list[dict[str, Any]]
    labels: list[int]
    cases: list[str]
    pred_only: list[str] = field(default_factory=list)
    ref_only: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    failed_policy: str = "worst"
    empty_reference: str = "score"


def _case_files(path: Path) -> dict[str, Path]:
    """Case name -> file, named as ``medseg predict`` names its cases and outputs
    (:func:`medseg.fsutil.unique_names`), so predictions of raw-named inputs pair with their references."""
    from medseg.fsutil import case_id, unique_names
    from medseg.io import list_cases
    from medseg.io.mask2d import is_mask2d_file, list_masks2d, mask2d_case_id

    out: dict[str, Path] = {}
    files = [p for p in list_cases(path) if not is_mask2d_file(p)] + list_masks2d(path)
    raw = [mask2d_case_id(p) if is_mask2d_file(p) else case_id(p) for p in files]
    for p, cid in zip(files, unique_names(raw)):
        if cid in out:
            raise InputError(f"two files give case '{cid}': {out[cid].name} and {p.name}", path=path,
                             code="duplicate_case")
        out[cid] = p
    return out


def pair_cases(pred: str | Path, ref: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair files by case name (file name without extension, sanitised as ``predict`` does).

    Two single files are paired whatever their names. Returns ``(pairs, pred_only, ref_only)``.
    """
    pred, ref = Path(pred), Path(ref)
    if pred.is_file() and ref.is_file():
        from medseg.fsutil import case_id, sanitize_name
        from medseg.io.mask2d import is_mask2d_file, mask2d_case_id

        return [(sanitize_name(mask2d_case_id(ref) if is_mask2d_file(ref) else case_id(ref)), pred, ref)], [], []
    p_files, r_files = _case_files(pred), _case_files(ref)
    if not r_files:
        raise InputError("no reference volumes found", path=ref, code="no_cases")
    pairs = [(c, p_files[c], r_files[c]) for c in sorted(r_files) if c in p_files]
    return pairs, sorted(set(p_files) - set(r_files)), sorted(set(r_files) - set(p_files))


@dataclass(frozen=True)
class ScoreOptions:
    """What every case is scored with (picklable: sent to worker processes / Ray tasks)."""

    labels: list[int] | None = None
    tolerance_mm: Any = 1.0
    percent: float = 95.0
    mode: str = "surface-distance"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    empty_reference: str = "score"
    pixel_spacing_mm: tuple[float, float] | None = None
    binary_2d: bool = True


def _ref_facts(ref) -> dict[str, Any]:
    """Image diagonal, voxel size and per-label voxel counts of a reference (for worst values)."""
    arr, spacing = ref.array, tuple(ref.spacing_mm)
    if is_2d(ref):
        arr, spacing = arr[0], spacing[1:]
    counts = np.bincount(arr.ravel()) if arr.size and int(arr.max(initial=0)) < 65536 else np.zeros(1, np.int64)
    return {"diag_mm": image_diagonal_mm(arr.shape, spacing), "voxel_ml": voxel_size_ml(spacing),
            "n_total": int(arr.size),
            "n_ref": {int(k): int(c) for k, c in enumerate(counts) if k > 0}}


def _score_one(job: tuple[str, Path | None, Path, ScoreOptions]
               ) -> tuple[str, list[LabelResult], str | None, dict[str, Any]]:
    """Worker: read and score one case. Returns (case, rows, error status or None, reference facts)."""
    from medseg.io.mask2d import read_label_file

    case, pred_path, ref_path, opt = job
    facts: dict[str, Any] = {}
    try:
        # non-integer, negative or NaN labels are refused with the file named
        ref = read_label_file(ref_path, pixel_spacing_mm=opt.pixel_spacing_mm, binary_2d=opt.binary_2d)
        facts = _ref_facts(ref)
        if pred_path is None:
            return case, [], "error:missing_pred", facts
        pred = read_label_file(pred_path, pixel_spacing_mm=opt.pixel_spacing_mm, binary_2d=opt.binary_2d)
        case_labels = opt.labels
        if case_labels is None:
            case_labels = sorted(set(labels_present(ref.array)) | set(labels_present(pred.array)))
        rows = evaluate_case(pred, ref, labels=case_labels, tolerance_mm=opt.tolerance_mm, percent=opt.percent,
                             mode=opt.mode, metrics=opt.metrics, empty_reference=opt.empty_reference)
        return case, rows, None, facts
    except MedsegError as exc:
        log.error("case %s: %s", case, exc)
        return case, [], status_of(exc), facts
    except Exception as exc:  # noqa: BLE001 - a batch reports any failing case and goes on
        log.error("case %s: %s: %s", case, type(exc).__name__, exc)
        log.debug("case %s traceback", case, exc_info=True)
        return case, [], f"error:{type(exc).__name__}", facts


def evaluate_cohort(
    pred: str | Path,
    ref: str | Path,
    *,
    labels: Sequence[int] | None = None,
    label_names: Mapping[int, str] | None = None,
    tolerance_mm: float | Mapping[int, float] = 1.0,
    percent: float = 95.0,
    mode: str = "surface-distance",
    workers: int = 1,
    progress: bool = True,
    executor=None,
    metrics: Sequence[str] | None = None,
    empty_reference: str = "score",
    failed: str = "worst",
    pixel_spacing_mm: Sequence[float] | None = None,
    binary_2d: bool = True,
) -> CohortResult:
    """Score every prediction under ``pred`` against the reference of the same name under ``ref``.

    Results do not depend on ``workers`` or ``executor`` (cases are scored independently, rows kept
    in case order). ``executor="ray"`` scores the cases in Ray CPU tasks (:mod:`medseg.executors`).
    ``metrics``: metric columns (:func:`medseg.metrics.catalog.parse_metrics`; default the four);
    ``empty_reference``: ``"score"`` or ``"nan"``; ``failed``: ``"worst"`` or ``"exclude"``;
    ``pixel_spacing_mm``: ``(sy, sx)`` of PNG / TIFF masks; ``binary_2d``: read those as binary masks.
    """
    if empty_reference not in EMPTY_REFERENCE:
        raise ConfigError(f"empty-reference convention must be one of {', '.join(EMPTY_REFERENCE)}, "
                          f"got {empty_reference!r}", code="bad_params")
    if failed not in FAILED_POLICIES:
        raise ConfigError(f"failed-case policy must be one of {', '.join(FAILED_POLICIES)}, got {failed!r}",
                          code="bad_params")
    columns = list(DEFAULT_METRICS) + [c for c in (metrics or []) if c not in DEFAULT_METRICS]
    pairs, pred_only, ref_only = pair_cases(pred, ref)
    for c in pred_only:
        log.warning("prediction '%s' has no reference: not scored", c)
    for c in ref_only:
        log.warning("reference '%s' has no prediction: reported as error:missing_pred", c)
    fixed = [int(k) for k in labels] if labels is not None else None
    if fixed is not None and (not fixed or any(k <= 0 for k in fixed)):
        raise InputError(f"labels must be one or more values > 0, got {fixed}", code="bad_labels")
    if fixed is not None and isinstance(tolerance_mm, Mapping):
        for k in fixed:
            tolerance_for(tolerance_mm, k)
    opt = ScoreOptions(fixed, tolerance_mm, percent, mode, tuple(columns), empty_reference,
                       tuple(float(s) for s in pixel_spacing_mm) if pixel_spacing_mm is not None else None,  # type: ignore[arg-type]
                       binary_2d)
    if pixel_spacing_mm is None:
        from medseg.io.mask2d import is_mask2d_file

        first = next((f for _, p, r in pairs for f in (p, r) if is_mask2d_file(f)), None)
        if first is not None:
            raise InputError("PNG/TIFF masks carry no reliable pixel spacing: give it with --pixel-spacing-mm "
                             "(row,column in mm; pipeline param pixel_spacing_mm)", path=first, code="no_spacing")
    ref_dir = Path(ref)
    jobs: list[tuple[str, Path | None, Path, ScoreOptions]] = [(c, p, r, opt) for c, p, r in pairs]
    ref_files = _case_files(ref_dir) if ref_only else {}
    jobs += [(c, None, ref_files[c], opt) for c in ref_only]
    results = _run_jobs(jobs, workers=workers, progress=progress, executor=executor)

    all_labels = set(fixed or [])
    if fixed is None:
        for _, rows, err, facts in results:
            all_labels.update(r.label for r in rows)
            if err is not None:  # a failed case still has the labels of its reference
                all_labels.update(k for k, n in facts.get("n_ref", {}).items() if n > 0)
    label_list = sorted(all_labels) if fixed is None else fixed
    names = dict(label_names or {})
    diags = [f["diag_mm"] for _, _, _, f in results if f]
    fallback_diag = max(diags) if diags else math.nan
    out_rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    by_case = {c: (rows, err, facts) for c, rows, err, facts in results}
    for case in sorted(by_case):
        rows, err, facts = by_case[case]
        if err is not None:
            failures[case] = err
            values = None
            if failed == "worst":
                n_ref = facts.get("n_ref")
                values = {k: worst_values(columns, diag_mm=facts.get("diag_mm", fallback_diag),
                                          n_ref=(n_ref.get(k, 0) if n_ref is not None else None),
                                          voxel_ml=facts.get("voxel_ml", math.nan)) for k in label_list}
            rows = error_rows(label_list, err, tolerance_mm, metrics=columns, values=values)
        have = {r.label: r for r in rows}
        for k in label_list:
            r = have.get(k)
            if r is None:  # label absent from both volumes of this case
                r = _both_empty_row(k, columns, tolerance_mm, facts, opt)
            d = {"case": case, "label": k, "label_name": names.get(k, "")}
            d.update({key: v for key, v in r.as_dict().items() if key != "label"})
            out_rows.append(d)
    shown = list(metrics) if metrics else list(DEFAULT_METRICS)  # the columns the outputs report
    return CohortResult(out_rows, label_list, sorted(by_case), pred_only, ref_only, failures, shown, failed,
                        empty_reference)


def _both_empty_row(k: int, columns: list[str], tolerance_mm, facts: dict[str, Any],
                    opt: ScoreOptions) -> LabelResult:
    tol = _tol_or_nan(tolerance_mm, k)
    vals = label_values(columns, n_ref=0, n_pred=0, n_both=0, n_total=facts.get("n_total", 1),
                        voxel_ml=facts.get("voxel_ml", 1.0),
                        diag_mm=facts.get("diag_mm", math.nan), tol=tol, mode=opt.mode, percent=opt.percent,
                        empty_reference=opt.empty_reference)
    return LabelResult(k, vals["dice"], vals["iou"], vals["hd95_mm"], vals["nsd"], "both_empty", 0, 0, tol,
                       {c: vals[c] for c in columns[len(DEFAULT_METRICS):]})


def _tol_or_nan(tolerance_mm, k: int) -> float:
    try:
        return tolerance_for(tolerance_mm, k)
    except ValueError:
        return float("nan")


def _run_jobs(jobs: list, *, workers: int, progress: bool,
              executor=None) -> list[tuple[str, list[LabelResult], str | None, dict[str, Any]]]:
    from medseg.executors import as_spec
    from medseg.progress import PlainProgress, progress_bar

    spec = as_spec(executor)
    workers = max(1, min(int(workers), len(jobs) or 1))
    # a terminal gets a bar, a log a line every 30 s; without progress a counter that never writes
    bar = progress_bar(len(jobs), "evaluate", "case", leave=False) if progress else PlainProgress(
        len(jobs), "evaluate", "case", interval_s=float("inf"))
    try:
        if not spec.is_local and jobs:
            from medseg.ray_runner import map_unordered

            got: dict[int, Any] = {}
            for i, res in map_unordered(_score_one, jobs, spec=spec):
                got[i] = res
                bar.update(1)
            return [got[i] for i in range(len(jobs))]
        if workers == 1:
            out = []
            for job in jobs:
                out.append(_score_one(job))
                bar.update(1)
            return out
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for res in pool.map(_score_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                out.append(res)
                bar.update(1)
            return out
    finally:
        bar.close()
