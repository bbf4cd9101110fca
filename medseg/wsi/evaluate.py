"""``medseg wsi evaluate``: slide predictions (``predictions.csv`` of ``medseg wsi predict``) against
slide labels (``slide_id,label[,split]``).

Slides are paired by id. A prediction whose status is not ``ok`` (the slide failed), a labelled
slide without prediction and a prediction without label are each *listed* with the reason in
``slide_metrics.json`` (``left_out``), the report and the console, and left out of the curves;
the command then exits 1. With ``--choose-threshold`` the threshold is chosen on the slides whose
``split`` is ``val`` / ``validation`` and every number is reported on the other slides.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from medseg.csvsafe import csv_untext
from medseg.errors import InputError
from medseg.metrics.slide_eval import choose_threshold, evaluate_slides

log = logging.getLogger("medseg.wsi")
VALIDATION = ("val", "valid", "validation")


def read_predictions(path: str | Path) -> tuple[dict[str, float], dict[str, str]]:
    """``({slide: probability}, {slide: problem})`` from a predictions CSV (``slide,probability,status``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read predictions CSV: {exc.strerror}", path=p, code="unreadable") from None
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "slide" not in reader.fieldnames or "probability" not in reader.fieldnames:
        raise InputError("predictions CSV needs the columns slide and probability (as medseg wsi predict writes)",
                         path=p, code="bad_columns")
    probs: dict[str, float] = {}
    problems: dict[str, str] = {}
    for r in reader:
        sid = csv_untext(r["slide"] or "").strip()
        status = csv_untext(r.get("status") or "ok").strip() or "ok"
        if status != "ok":
            problems[sid] = f"prediction failed ({status})"
            continue
        try:
            v = float(r["probability"])
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or not 0.0 <= v <= 1.0:
            problems[sid] = f"probability '{r['probability']}' is not a number in [0, 1]"
        elif sid in probs:
            problems[sid] = "listed twice in the predictions"
            probs.pop(sid)
        else:
            probs[sid] = v
    return probs, problems


def read_splits(path: str | Path) -> dict[str, str]:
    """``{slide: split}`` from a third ``split`` column of the labels CSV (empty without one)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    rows = [r for r in csv.reader(text.splitlines()) if r]
    if not rows or len(rows[0]) < 3 or rows[0][2].strip().lower() != "split":
        return {}
    return {r[0].strip(): r[2].strip().lower() for r in rows[1:] if len(r) >= 3}


def evaluate_slide_predictions(pred_csv: str | Path, labels_csv: str | Path, *, threshold: float | None = None,
                               choose: str | None = None, classes: list[str] | None = None,
                               n_boot: int = 2000) -> dict[str, Any]:
    """Pair, check and score; returns the result dict written by :func:`medseg.report.slides.write_slide_report`."""
    from medseg.wsi.labels import read_labels

    probs, left = read_predictions(pred_csv)
    labels, label_problems = read_labels(labels_csv, classes=classes)
    left.update({s: w for s, w in label_problems.items() if s not in left})
    for s in sorted(set(labels) - set(probs) - set(left)):
        left[s] = "labelled but no prediction"
    for s in sorted(set(probs) - set(labels) - set(left)):
        left[s] = "predicted but not labelled"
    both = sorted(s for s in set(probs) & set(labels) if s not in left)
    splits = read_splits(labels_csv)
    val = [s for s in both if splits.get(s, "") in VALIDATION]
    test = [s for s in both if s not in val] if choose else both
    if choose:
        if not val:
            raise InputError("--choose-threshold needs validation slides: a 'split' column in the labels CSV with "
                             "'val' rows", path=labels_csv, code="no_validation")
        thr = choose_threshold([labels[s] for s in val], [probs[s] for s in val], choose)
        source = f"chosen on {len(val)} validation slides by {choose}; metrics on the other {len(test)} slides"
    else:
        thr = 0.5 if threshold is None else float(threshold)
        source = "given" if threshold is not None else "default 0.5"
    if not test:
        raise InputError("no slide has both a prediction and a label", path=pred_csv, code="no_cases")
    res = evaluate_slides([labels[s] for s in test], [probs[s] for s in test], threshold=thr, n_boot=n_boot)
    for s, why in left.items():
        log.warning("slide %s left out: %s", s, why)
    return {"pred": str(pred_csv), "labels": str(labels_csv), "classes": list(classes or ["0", "1"]),
            "threshold_source": source, "test": res, "validation_slides": val, "left_out": left,
            "slides": {s: {"label": labels[s], "probability": probs[s]} for s in test}}
