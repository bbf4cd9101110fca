"""Data sets in the MSD / nnU-Net layout: which files make up which case, and the label names.

Layout::

    ROOT/imagesTr/CASE.nii.gz            (or CASE_0000.nii.gz, CASE_0001.nii.gz ... per channel)
    ROOT/labelsTr/CASE.nii.gz
    ROOT/dataset.json                    (optional; label names)

Only the folder is read here (names, pairing, ``dataset.json``), no volume: training
(:mod:`medseg.training.dataset` loads and checks the cases), planning and out-of-fold inference
(:mod:`medseg.inference.oof`) all find a data set's files through :func:`scan_dataset`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError
from medseg.fsutil import case_id
from medseg.io import VOLUME_EXT

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
    :func:`medseg.training.dataset.load_cases` from the label values found (``label_1``, ``label_2`` ...).
    """
    root = Path(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not root.is_dir():
        raise InputError("data set folder does not exist" if not root.exists() else "data set path is a file, "
                         "not a folder", path=root, code="missing")
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
