"""Slide label CSVs: ``slide_id,label`` rows (a header line is allowed).

Labels are 0/1, or class names mapped through ``classes`` (``[negative, positive]``). Problems
are per slide: a row naming a slide that is not among the inputs, or holding an unknown label,
is reported in ``problems`` and left out; the other slides go on.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medseg.errors import InputError

__all__ = ["read_labels"]


def read_labels(path: str | Path, *, slides: list[str] | None = None,
                classes: list[str] | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """Returns ``({slide_id: 0/1}, {slide_id_or_row: problem})``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read label CSV: {exc.strerror}", path=p, code="unreadable") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("slide", "slide_id", "id", "case_id"):
        rows = rows[1:]
    if not rows:
        raise InputError("label CSV holds no rows (expected slide_id,label)", path=p, code="empty")
    names = {str(c): i for i, c in enumerate(classes)} if classes else {"0": 0, "1": 1}
    labels: dict[str, int] = {}
    problems: dict[str, str] = {}
    known = set(slides) if slides is not None else None
    for n, r in enumerate(rows, 1):
        if len(r) < 2:
            problems[f"row {n}"] = f"{p}: row {n} needs two columns (slide_id,label)"
            continue
        sid, lab = r[0].strip(), r[1].strip()
        if lab not in names:
            problems[sid] = f"{p}: slide '{sid}' has unknown label '{lab}' (allowed: {', '.join(names)})"
        elif known is not None and sid not in known:
            problems[sid] = f"{p}: slide '{sid}' is not among the input slides"
        elif sid in labels and labels[sid] != names[lab]:
            problems[sid] = f"{p}: slide '{sid}' is listed twice with different labels"
            labels.pop(sid)
        else:
            labels[sid] = names[lab]
    return labels, problems
