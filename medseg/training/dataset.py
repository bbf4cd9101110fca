"""Training data sets in the MSD / nnU-Net layout: scanning, validation, folds, loading.

Layout::

    ROOT/imagesTr/CASE.nii.gz            (or CASE_0000.nii.gz, CASE_0001.nii.gz ... per channel)
    ROOT/labelsTr/CASE.nii.gz
    ROOT/dataset.json                    (optional; label names)

Every problem is found before training starts and reported with the case that has it.

>>> split_folds(["a", "b", "c", "d"], num_folds=2, seed=0)   # doctest: +SKIP
[['c', 'a'], ['d', 'b']]
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.fsutil import case_id
from medseg.io import VOLUME_EXT, read_volume

log = logging.getLogger("medseg.training")

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class CaseFiles:
    """Files of one training case: one image per channel and its label."""

    case: str
    images: list[Path]
    label: Path


@dataclass
class DatasetInfo:
    """What a data set folder holds: the cases and the label names (index -> name)."""

    root: Path
    cases: list[CaseFiles]
    labels: dict[int, str]
    channels: int
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(VOLUME_EXT))


def read_dataset_json(root: Path) -> dict | None:
    """``ROOT/dataset.json`` parsed, or None when absent."""
    p = root / "dataset.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot parse dataset.json: {exc}", path=p, code="bad_dataset_json") from None


def labels_from_json(meta: dict, path: Path) -> dict[int, str] | None:
    """Label names from an MSD (``{"0": "background"}``) or nnU-Net v2 (``{"background": 0}``) file."""
    raw = meta.get("labels")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise InputError("'labels' must be a non-empty mapping", path=path, code="bad_dataset_json")
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            if isinstance(v, int) and not isinstance(v, bool):       # nnU-Net v2: name -> index
                out[int(v)] = str(k)
            else:                                                     # MSD: "index" -> name
                out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise InputError(f"label entry {k!r}: {v!r} is neither 'index: name' nor 'name: index' (region "
                             "labels are not supported)", path=path, code="bad_dataset_json") from None
    if 0 not in out:
        out[0] = "background"
    return dict(sorted(out.items()))


def scan_dataset(root: str | Path) -> DatasetInfo:
    """Pair ``imagesTr/`` with ``labelsTr/`` by case id; raise InputError naming unpaired cases.

    Label names come from ``dataset.json`` when present; otherwise they are filled in by
    :func:`load_cases` from the label values found (``label_1``, ``label_2`` ...).
    """
    root = Path(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"missing folder {d.name}/ (expected the MSD / nnU-Net layout imagesTr/ + labelsTr/)",
                             path=root, code="bad_layout")
    images: dict[str, dict[int, Path]] = {}
    files = _volume_files(img_dir)
    multi = bool(files) and all(_CHANNEL.match(case_id(p)) for p in files)
    for p in files:
        cid, ch = case_id(p), 0
        if multi:
            m = _CHANNEL.match(cid)
            cid, ch = m["case"], int(m["ch"])  # type: ignore[index]
        images.setdefault(cid, {})[ch] = p
    labels = {case_id(p): p for p in _volume_files(lab_dir)}
    if not images:
        raise InputError("imagesTr/ holds no volumes", path=img_dir, code="empty")
    no_label = sorted(set(images) - set(labels))
    if no_label:
        raise InputError(f"{len(no_label)} case(s) have no label in labelsTr/: {', '.join(no_label[:10])}"
                         f"{' ...' if len(no_label) > 10 else ''}", path=root, code="missing_label")
    no_image = sorted(set(labels) - set(images))
    if no_image:
        raise InputError(f"{len(no_image)} label(s) have no image in imagesTr/: {', '.join(no_image[:10])}",
                         path=root, code="missing_image")
    channels = {len(ch) for ch in images.values()}
    if len(channels) != 1:
        most = max(channels, key=lambda n: sum(len(ch) == n for ch in images.values()))
        odd = sorted(cid for cid, ch in images.items() if len(ch) != most)
        raise InputError(f"cases have different numbers of channels {sorted(channels)}: {', '.join(odd[:10])} "
                         f"differ from the {most} of the others", path=img_dir, code="channels")
    cases = []
    for cid in sorted(images):
        chans = images[cid]
        if sorted(chans) != list(range(len(chans))):
            raise InputError(f"case {cid}: channel files must be numbered _0000.._{len(chans) - 1:04d}",
                             path=img_dir, code="channels")
        cases.append(CaseFiles(cid, [chans[i] for i in range(len(chans))], labels[cid]))
    meta = read_dataset_json(root) or {}
    label_names = labels_from_json(meta, root / "dataset.json") if meta else None
    return DatasetInfo(root=root, cases=cases, labels=label_names or {}, channels=channels.pop(), meta=meta)


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
