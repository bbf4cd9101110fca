"""Show a volume's grid and values: ``medseg info PATH [--json]``.

PATH is a NIfTI file, an NRRD/MHA/MHD file or a DICOM series folder. Prints shape (z, y, x),
spacing (mm), origin (RAS mm), orientation code, dtype, intensity range (min/max and 1st/99th
percentiles) and, for what looks like a label map (integer values >= 0, at most 256 distinct
values and either at most 16 of them or mostly background 0), the label values with voxel counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

MAX_LABELS = 256


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="NIfTI / NRRD / MHA / MHD file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--series-uid", default=None, help="SeriesInstanceUID when a DICOM folder holds several series")
    p.add_argument("--label", action="store_true", help="treat the volume as a label map (check values, list labels)")


def looks_like_labels(array: np.ndarray) -> np.ndarray | None:
    """Sorted label values if ``array`` looks like a label map, else None.

    A label map here is integer-typed, non-negative, with at most 256 distinct values, and
    either at most 16 of them or background (0) filling at least half of the voxels.
    """
    if array.dtype.kind not in "iub" or array.size == 0:
        return None
    if array.min() < 0:
        return None
    values = np.unique(array)
    if values.size > MAX_LABELS:
        return None
    if values.size <= 16 or np.count_nonzero(array == 0) >= array.size / 2:
        return values
    return None


def describe(vol, *, force_label: bool = False) -> dict[str, Any]:
    """Summary dictionary of a Volume (JSON-serialisable; no patient data)."""
    a = vol.array
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    info: dict[str, Any] = {
        "path": vol.meta.get("path"),
        "format": vol.meta.get("format"),
        "shape_zyx": list(vol.shape),
        "spacing_mm_zyx": [round(s, 6) for s in vol.spacing_mm],
        "origin_mm_ras": [round(o, 4) for o in vol.origin_mm],
        "orientation": vol.orientation,
        "direction": np.round(vol.direction, 6).tolist(),
        "dtype": str(a.dtype),
        "n_non_finite": int(a.size - finite.size),
    }
    if finite.size:
        p1, p99 = np.percentile(finite, [1, 99])
        info.update(min=float(finite.min()), max=float(finite.max()), p1=float(p1), p99=float(p99))
    if vol.meta.get("series_uid") is not None:
        info["series_uid"] = vol.meta["series_uid"]
        info["n_slices"] = vol.meta.get("n_slices")
    labels = looks_like_labels(a)
    if force_label or vol.is_label:
        labels = np.unique(a) if labels is None else labels
    if labels is not None:
        counts = [int(np.count_nonzero(a == v)) for v in labels] if labels.size <= 64 else None
        info["labels"] = [int(v) if float(v).is_integer() else float(v) for v in labels]
        if counts is not None:
            info["label_voxels"] = counts
    return info


def _fmt(values, digits: int = 4) -> str:
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


def format_text(info: dict[str, Any]) -> str:
    lines = [f"path:         {info['path']}"]
    if info.get("format"):
        lines.append(f"format:       {info['format']}")
    if "series_uid" in info:
        lines.append(f"series:       {info['series_uid']} ({info['n_slices']} slices)")
    lines += [
        f"shape (z,y,x): {tuple(info['shape_zyx'])}",
        f"spacing (mm):  {_fmt(info['spacing_mm_zyx'], 6)}",
        f"origin (RAS):  {_fmt(info['origin_mm_ras'], 7)}",
        f"orientation:   {info['orientation']}",
        f"dtype:         {info['dtype']}",
    ]
    if "min" in info:
        lines.append(f"range:         min {info['min']:.6g}, max {info['max']:.6g}, "
                     f"p1 {info['p1']:.6g}, p99 {info['p99']:.6g}")
    if info["n_non_finite"]:
        lines.append(f"non-finite:    {info['n_non_finite']} voxels (NaN/Inf)")
    if "labels" in info:
        if "label_voxels" in info:
            body = ", ".join(f"{v} ({n} vox)" for v, n in zip(info["labels"], info["label_voxels"]))
        else:
            body = ", ".join(str(v) for v in info["labels"])
        lines.append(f"labels:        {len(info['labels'])} values: {body}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from medseg.cli.common import check_input
    from medseg.errors import InputError
    from medseg.io import read_volume

    check_input(args.path, "PATH")
    try:
        vol = read_volume(args.path, series_uid=args.series_uid, kind="label" if args.label else None)
    except InputError as exc:
        from medseg.io.wsi import SLIDE_EXTENSIONS

        if exc.code == "unknown_format" and args.path.suffix.lower() in SLIDE_EXTENSIONS:
            raise InputError(f"{exc.problem}; for a whole-slide image use: medseg wsi info {args.path}",
                             path=args.path, code=exc.code) from None
        raise
    info = describe(vol, force_label=args.label)
    info["path"] = str(args.path)
    print(json.dumps(info) if args.json else format_text(info))
    return 0
