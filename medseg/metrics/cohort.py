"""Scoring a cohort: pair prediction and reference files by name, score each pair, in parallel.

A case that cannot be scored (unreadable file, geometry mismatch, bad labels) gets rows with an
``error:<code>`` status for every label and the others go on. References without a prediction
get ``error:missing_pred`` rows (a missing prediction is a failure, not a skip); predictions
without a reference are listed in ``CohortResult.pred_only``.

When no labels are given, every label > 0 found in any reference or prediction is scored for
every case: a worker scores the labels present in its case, and labels absent from both volumes
are filled in afterwards as ``both_empty`` (their values need nothing from the volumes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError, status_of
from medseg.metrics.evaluate import LabelResult, error_rows, evaluate_case, labels_present, tolerance_for

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


def _case_files(path: Path) -> dict[str, Path]:
    """Case name -> file, named as ``medseg predict`` names its cases and outputs
    (:func:`medseg.fsutil.case_names`), so predictions of raw-named inputs pair with their references."""
    from medseg.fsutil import case_names
    from medseg.io import list_cases

    out: dict[str, Path] = {}
    paths = list_cases(path)
    for p, cid in zip(paths, case_names(paths)):
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
        from medseg.fsutil import case_name

        return [(case_name(ref), pred, ref)], [], []
    p_files, r_files = _case_files(pred), _case_files(ref)
    if not r_files:
        raise InputError("no reference volumes found", path=ref, code="no_cases")
    pairs = [(c, p_files[c], r_files[c]) for c in sorted(r_files) if c in p_files]
    return pairs, sorted(set(p_files) - set(r_files)), sorted(set(r_files) - set(p_files))


def _score_one(job: tuple[str, Path, Path, list[int] | None, Any, float, str]
               ) -> tuple[str, list[LabelResult], str | None]:
    """Worker: read and score one case. Returns (case, rows, error status or None)."""
    from medseg.io import read_volume

    case, pred_path, ref_path, labels, tolerance_mm, percent, mode = job
    try:
        # kind="label": non-integer, negative or NaN labels are refused with the file named
        ref = read_volume(ref_path, kind="label")
        pred = read_volume(pred_path, kind="label")
        case_labels = labels
        if case_labels is None:
            case_labels = sorted(set(labels_present(ref.array)) | set(labels_present(pred.array)))
        rows = evaluate_case(pred, ref, labels=case_labels, tolerance_mm=tolerance_mm, percent=percent, mode=mode)
        return case, rows, None
    except MedsegError as exc:
        log.error("case %s: %s", case, exc)
        return case, [], status_of(exc)
    except Exception as exc:  # noqa: BLE001 - a batch reports any failing case and goes on
        log.error("case %s: %s: %s", case, type(exc).__name__, exc)
        log.debug("case %s traceback", case, exc_info=True)
        return case, [], f"error:{type(exc).__name__}"


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
) -> CohortResult:
    """Score every prediction under ``pred`` against the reference of the same name under ``ref``.

    Results do not depend on ``workers`` or ``executor`` (cases are scored independently, rows kept
    in case order). ``executor="ray"`` scores the cases in Ray CPU tasks (:mod:`medseg.executors`).
    """
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
    jobs = [(c, p, r, fixed, tolerance_mm, percent, mode) for c, p, r in pairs]
    results = _run_jobs(jobs, workers=workers, progress=progress, executor=executor)

    all_labels = set(fixed or [])
    if fixed is None:
        for _, rows, _ in results:
            all_labels.update(r.label for r in rows)
    label_list = sorted(all_labels) if fixed is None else fixed
    names = dict(label_names or {})
    out_rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    by_case = {c: (rows, err) for c, rows, err in results}
    for case in sorted(set(by_case) | set(ref_only)):
        if case in by_case:
            rows, err = by_case[case]
        else:
            rows, err = [], "error:missing_pred"
        if err is not None:
            failed[case] = err
            rows = error_rows(label_list, err, tolerance_mm)
        have = {r.label: r for r in rows}
        for k in label_list:
            r = have.get(k)
            if r is None:  # label absent from both volumes of this case
                r = LabelResult(k, 1.0, 1.0, 0.0, 1.0, "both_empty", 0, 0, _tol_or_nan(tolerance_mm, k))
            d = {"case": case, "label": k, "label_name": names.get(k, "")}
            d.update({key: v for key, v in r.as_dict().items() if key != "label"})
            out_rows.append(d)
    return CohortResult(out_rows, label_list, sorted(set(by_case) | set(ref_only)), pred_only, ref_only, failed)


def _tol_or_nan(tolerance_mm, k: int) -> float:
    try:
        return tolerance_for(tolerance_mm, k)
    except ValueError:
        return float("nan")


def _run_jobs(jobs: list, *, workers: int, progress: bool,
              executor=None) -> list[tuple[str, list[LabelResult], str | None]]:
    from tqdm import tqdm

    from medseg.executors import as_spec

    spec = as_spec(executor)
    workers = max(1, min(int(workers), len(jobs) or 1))
    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress, leave=False)
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
