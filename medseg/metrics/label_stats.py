"""Per-label statistics of a segmentation and the image it was made from (``medseg predict
--statistics``; TotalSegmentator's ``--statistics`` is the model).

For every foreground label of the bundle (present in the map or not), on the image's own grid:

* ``voxels``: voxel count; ``volume_ml``: voxels x voxel volume / 1000;
* ``mean``, ``std`` (sample standard deviation, n - 1, as SimpleITK's LabelStatisticsImageFilter;
  0 for a single voxel), ``min``, ``max``: intensity of the input image (its first channel for
  multi-channel models) inside the label, in the image's own units (e.g. HU after rescale);
* bounding box: ``bbox_start_voxel`` / ``bbox_size_voxel`` (x, y, z index order as ITK),
  ``bbox_size_mm`` (the box's extent along the image axes x, y, z: voxels x spacing) and
  ``bbox_min_ras_mm`` / ``bbox_max_ras_mm``: the lowest and highest world (RAS) coordinates of the
  box's corner voxel centres.

An empty label has ``voxels = 0``, ``volume_ml = 0`` and no intensity or box values (None in JSON,
empty in the CSV). Case JSON: ``{"case", "labels": [row, ...]}``; cohort CSV: one row per case
and label, lists split into ``_x``, ``_y``, ``_z`` (``_r``, ``_a``, ``_s``) columns.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.volume import Volume

STATS_FORMAT = "medseg-statistics/1"
_VECTORS = {"bbox_start_voxel": "xyz", "bbox_size_voxel": "xyz", "bbox_size_mm": "xyz", "bbox_min_ras_mm": "ras",
            "bbox_max_ras_mm": "ras"}
CSV_COLUMNS = ["case", "label", "name", "voxels", "volume_ml", "mean", "std", "min", "max"] + [
    f"{k}_{a}" for k, axes in _VECTORS.items() for a in axes]


def label_statistics(label: Volume, image: Volume, labels: Mapping[int, str]) -> list[dict[str, Any]]:
    """One dict per foreground label value of ``labels`` (sorted); see the module doc."""
    from scipy import ndimage

    if label.shape != image.shape:
        raise ValueError(f"label map {label.shape} and image {image.shape} are not on one grid")
    lab = np.asarray(label.array)
    img = np.asarray(image.array, dtype=np.float64)
    values = sorted(int(v) for v in labels if int(v) > 0)
    top = max(values + [int(lab.max(initial=0))])
    flat = lab.reshape(-1).astype(np.intp)
    counts = np.bincount(flat, minlength=top + 1)
    sums = np.bincount(flat, weights=img.reshape(-1), minlength=top + 1)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    sq = np.bincount(flat, weights=(img.reshape(-1) - means[flat]) ** 2, minlength=top + 1)
    boxes = ndimage.find_objects(lab.astype(np.int32), max_label=top)
    voxel_ml = float(np.prod(label.spacing_mm)) / 1000.0
    sp_xyz = np.asarray(label.spacing_mm[::-1], dtype=np.float64)
    rows = []
    for v in values:
        n = int(counts[v]) if v < len(counts) else 0
        row: dict[str, Any] = {"label": v, "name": str(labels[v]), "voxels": n, "volume_ml": n * voxel_ml}
        if n == 0:
            row.update({k: None for k in ("mean", "std", "min", "max", *_VECTORS)})
        else:
            inside = img[lab == v]
            box = boxes[v - 1]
            start = np.array([s.start for s in box])[::-1]          # x, y, z
            size = np.array([s.stop - s.start for s in box])[::-1]
            corners = np.array([[z, y, x, 1.0] for z in (box[0].start, box[0].stop - 1)
                                for y in (box[1].start, box[1].stop - 1) for x in (box[2].start, box[2].stop - 1)])
            world = (label.affine @ corners.T)[:3].T
            row.update({"mean": float(means[v]), "std": float(np.sqrt(sq[v] / (n - 1))) if n > 1 else 0.0,
                        "min": float(inside.min()), "max": float(inside.max()),
                        "bbox_start_voxel": start.tolist(), "bbox_size_voxel": size.tolist(),
                        "bbox_size_mm": (size * sp_xyz).tolist(), "bbox_min_ras_mm": world.min(axis=0).tolist(),
                        "bbox_max_ras_mm": world.max(axis=0).tolist()})
        rows.append(row)
    return rows


def write_case_statistics(path: str | Path, case: str, rows: list[dict[str, Any]]) -> Path:
    """``{"format", "case", "labels": rows}`` as JSON, atomically."""
    from medseg.fsutil import atomic_write_text

    doc = {"format": STATS_FORMAT, "case": case, "labels": rows}
    return atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def csv_rows(case: str, rows: list[dict[str, Any]]) -> Iterable[list[Any]]:
    """The CSV rows of one case (lists split into columns, None as an empty cell)."""
    for r in rows:
        out: list[Any] = [case] + [r.get(k) for k in CSV_COLUMNS[1:9]]
        for k, axes in _VECTORS.items():
            vec = r.get(k)
            out += list(vec) if vec is not None else [None] * len(axes)
        yield ["" if v is None else v for v in out]


def write_cohort_statistics(path: str | Path, cases: Iterable[tuple[str, list[dict[str, Any]]]]) -> Path:
    """The cohort's ``statistics.csv`` (header :data:`CSV_COLUMNS`), atomically; text cells neutralised
    against spreadsheet formulas (:mod:`medseg.csvsafe`)."""
    from medseg.csvsafe import csv_text
    from medseg.fsutil import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for case, rows in cases:
        for row in csv_rows(case, rows):
            w.writerow([csv_text(c) for c in row])
    return atomic_write_text(path, buf.getvalue())


def read_case_statistics(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(case, rows)`` of a JSON written by :func:`write_case_statistics`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return str(doc["case"]), list(doc["labels"])
