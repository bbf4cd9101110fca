"""Atomic CSV and JSON writers for metric tables and summaries, and figures as PNG bytes."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.csvsafe import csv_text, csv_untext
from medseg.fsutil import atomic_write_text

CSV_COLUMNS = ("case", "label", "label_name", "dice", "iou", "hd95_mm", "nsd", "status",
               "n_ref_voxels", "n_pred_voxels", "nsd_tolerance_mm")
_TEXT = ("case", "label_name", "status")
_INT = ("label", "n_ref_voxels", "n_pred_voxels")


def csv_columns(metrics: Sequence[str] | None = None) -> tuple[str, ...]:
    """The columns of metrics.csv for the selected metric columns (default: ``CSV_COLUMNS``)."""
    if metrics is None:
        return CSV_COLUMNS
    return ("case", "label", "label_name", *metrics, "status", "n_ref_voxels", "n_pred_voxels", "nsd_tolerance_mm")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)  # repr: shortest exact round-trip
    return v


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: str | Path, *,
                      metrics: Sequence[str] | None = None) -> Path:
    """One row per case and label, columns :func:`csv_columns` (floats written exactly; text cells
    that a spreadsheet would run as a formula are quoted, :mod:`medseg.csvsafe`)."""
    cols = csv_columns(metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(csv_text(r.get(c, ""))) for c in cols])
    return atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.csv back as dicts (numbers as float/int)."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            d: dict[str, Any] = {k: csv_untext(v) for k, v in r.items()}
            for c in d:
                if c in _INT:
                    d[c] = int(d[c])
                elif c not in _TEXT:
                    d[c] = float(d[c])
            out.append(d)
    return out


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None  # strict JSON has no NaN
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def write_json(obj: Any, path: str | Path) -> Path:
    """Strict JSON (NaN/inf written as null), indented, atomically."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure, laid out tight, as PNG bytes (every figure of the reports goes through here)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
