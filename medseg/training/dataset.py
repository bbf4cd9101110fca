"""Training data sets in the MSD / nnU-Net layout: folds, loading and checking the cases.

The folder is scanned by :func:`medseg.io.dataset.scan_dataset` (which files make up which case,
label names from ``dataset.json``). Every problem is found before training starts and reported with
the case that has it.

>>> split_folds(["a", "b", "c", "d"], num_folds=2, seed=0)   # doctest: +SKIP
[['c', 'a'], ['d', 'b']]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medseg.errors import InputError
from medseg.io import read_volume
from medseg.io.dataset import CaseFiles, DatasetInfo

log = logging.getLogger("medseg.training")


def split_folds(case_ids: list[str], *, num_folds: int, seed: int) -> list[list[str]]:
    """Deterministic k-fold split: sort, shuffle with ``seed``, cut into ``num_folds`` near-equal parts."""
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise InputError(f"{len(ids)} cases cannot be split into {num_folds} folds; lower data.num_folds",
                         code="too_few_cases")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [[ids[i] for i in part] for part in np.array_split(order, num_folds)]


def train_val_split(case_ids: list[str], *, fold: int | str, num_folds: int, seed: int) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) for ``fold``; ``fold='all'`` trains on everything."""
    if fold == "all":
        return sorted(case_ids), []
    folds = split_folds(case_ids, num_folds=num_folds, seed=seed)
    val = sorted(folds[int(fold)])
    vs = set(val)
    return [c for c in sorted(case_ids) if c not in vs], val


@dataclass
class RawCase:
    """A case as read: image (C, z, y, x) float32, label (z, y, x) uint8, spacing (z, y, x) mm."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]


def load_case(files: CaseFiles, *, allowed_labels: set[int] | None) -> RawCase:
    """Read and check one case: geometry of every channel vs the label, NaNs, label values.

    Raises InputError naming the case and the file.
    """
    lab = read_volume(files.label, is_label=True)
    chans = []
    for p in files.images:
        img = read_volume(p)
        why = img.grid_mismatch(lab, tol_mm=1e-3)
        if why:
            raise InputError(f"case {files.case}: image and label grids differ ({why})", path=p,
                             code="geometry_mismatch")
        arr = np.asarray(img.array, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise InputError(f"case {files.case}: image has {bad} NaN/inf voxel(s)", path=p, code="nan")
        chans.append(arr)
    la = np.asarray(lab.array)
    if la.dtype.kind == "f" and not np.all(np.isfinite(la)):
        raise InputError(f"case {files.case}: label has NaN/inf voxels", path=files.label, code="nan")
    values = np.unique(la)
    if np.any(values != np.round(values)) or np.any(values < 0) or values.max(initial=0) > 255:
        raise InputError(f"case {files.case}: label values must be integers 0..255, found "
                         f"{values[:10].tolist()}", path=files.label, code="bad_label_values")
    if allowed_labels is not None:
        extra = sorted(set(int(v) for v in values) - allowed_labels)
        if extra:
            raise InputError(f"case {files.case}: unexpected label value(s) {extra} (allowed: "
                             f"{sorted(allowed_labels)})", path=files.label, code="bad_label_values")
    return RawCase(files.case, np.stack(chans), la.astype(np.uint8), lab.spacing_mm)


def load_cases(info: DatasetInfo, case_ids: list[str] | None = None) -> dict[str, RawCase]:
    """Read every case (or ``case_ids``) into RAM, checked. Fills ``info.labels`` when it was empty.

    Without dataset.json, the label set is the union of the values found; a case holding a value
    that no other case has is still accepted (it is a class), but values must be integers >= 0.
    """
    wanted = set(case_ids) if case_ids is not None else None
    allowed = set(info.labels) if info.labels else None
    out: dict[str, RawCase] = {}
    for cf in info.cases:
        if wanted is not None and cf.case not in wanted:
            continue
        out[cf.case] = load_case(cf, allowed_labels=allowed)
    if not info.labels:
        found = sorted(set().union(*(set(np.unique(c.label).tolist()) for c in out.values())))
        top = max(found)
        missing = sorted(set(range(top + 1)) - set(found))
        if missing:
            log.warning("label value(s) %s never occur in the data set (classes 0..%d are trained anyway)",
                        missing, top)
        info.labels = {i: ("background" if i == 0 else f"label_{i}") for i in range(top + 1)}
    if len(info.labels) < 2:
        raise InputError("labels hold only background: nothing to segment", path=info.root, code="no_foreground")
    return out
