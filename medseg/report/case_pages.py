"""One HTML page per case (``cases/<case>.html``) with the image and contours of every label, and the
worst / median / best cases of each label (by Dice) for the main report. Self-contained pages:
pictures embedded as PNG, no external script or style sheet; they open from disk."""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.fsutil import atomic_write_text, safe_join, sanitize_name
from medseg.report.html import metric_title

log = logging.getLogger("medseg.report")


def find_image(images_dir: str | Path, case: str) -> Path | None:
    """The image of ``case`` under ``images_dir``: same case name, or nnU-Net's ``<case>_0000``."""
    from medseg.fsutil import case_id
    from medseg.io import list_cases
    from medseg.io.mask2d import list_masks2d, mask2d_case_id

    for p in list_cases(images_dir):
        if case_id(p) in (case, f"{case}_0000"):
            return p
    for p in list_masks2d(images_dir):
        if mask2d_case_id(p) in (case, f"{case}_0000"):
            return p
    return None


def pick_cases(rows: Sequence[dict[str, Any]], label: int, metric: str = "dice") -> list[tuple[str, str]]:
    """``[("worst", case), ("median", case), ("best", case)]`` of ``label`` by ``metric`` among the
    scored rows (fewer when fewer cases)."""
    scored = [r for r in rows if int(r["label"]) == label and not str(r["status"]).startswith("error")
              and not math.isnan(float(r[metric]))]
    scored.sort(key=lambda r: (float(r[metric]), str(r["case"])))
    if not scored:
        return []
    picks = [("worst", scored[0]), ("median", scored[(len(scored) - 1) // 2]), ("best", scored[-1])]
    out: list[tuple[str, str]] = []
    for kind, r in picks:
        if str(r["case"]) not in [c for _, c in out]:
            out.append((kind, str(r["case"])))
    return out


def _read_case(pred: Path, ref: Path, image: Path | None, pixel_spacing, binary_2d: bool):
    from medseg.io.mask2d import read_label_file
    from medseg.metrics.evaluate import is_2d

    r = read_label_file(ref, pixel_spacing_mm=pixel_spacing, binary_2d=binary_2d)
    p = read_label_file(pred, pixel_spacing_mm=pixel_spacing, binary_2d=binary_2d)
    img = None
    if image is not None:
        if image.name.lower().endswith((".png", ".tif", ".tiff")):
            from PIL import Image

            with Image.open(image) as im:
                img = np.asarray(im.convert("L"), dtype=np.float32)[None]
        else:
            from medseg.io import read_volume

            img = read_volume(image, allow_2d=True).array.astype(np.float32)
        if img.shape != r.array.shape:
            log.warning("image %s has shape %s, the reference %s: drawn without it", image.name, img.shape,
                        r.array.shape)
            img = None
    spacing = tuple(r.spacing_mm)
    if is_2d(r):
        return (img[0] if img is not None else None), r.array[0], p.array[0], spacing[1:]
    return img, r.array, p.array, spacing


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def write_case_pages(rows: Sequence[dict[str, Any]], labels: Sequence[int], metrics: Sequence[str],
                     files: dict[str, tuple[Path, Path]], images_dir: str | Path | None, out_dir: str | Path, *,
                     pixel_spacing=None, binary_2d: bool = True) -> tuple[dict[str, str], str]:
    """Write ``out_dir/cases/<case>.html`` for every case with both files; return ``(links, picks_html)``:
    case -> relative link, and the HTML of the worst / median / best section for the main report."""
    from medseg.report.images import slices_png

    e = html.escape
    links: dict[str, str] = {}
    figures: dict[tuple[str, int], str] = {}
    for case, (pred, ref) in sorted(files.items()):
        image = find_image(images_dir, case) if images_dir is not None else None
        try:
            img, r, p, spacing = _read_case(pred, ref, image, pixel_spacing, binary_2d)
        except Exception as exc:  # noqa: BLE001 - a case that cannot be drawn gets no page; the others go on
            log.warning("case %s: no picture (%s)", case, exc)
            continue
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(case)}</title><style>"
                 "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
                 "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
                 f"<p><a href='../report.html'>back to the report</a></p><h1>Case {e(case)}</h1>"]
        if image is None:
            parts.append("<p>No image given or found for this case: contours on black.</p>")
        case_rows = {int(x["label"]): x for x in rows if str(x["case"]) == case}
        for k in labels:
            row = case_rows.get(int(k))
            rk, pk = r == k, p == k
            if row is None or not (rk.any() or pk.any()):
                continue
            b64 = _b64(slices_png(img, rk, pk, spacing, title=f"{case} label {k}"))
            figures[(case, int(k))] = b64
            vals = "".join(f"<th>{e(metric_title(m))}</th><td>{_fmt(row.get(m))}</td>" for m in metrics)
            parts.append(f"<h2>Label {k} {e(str(row.get('label_name') or ''))}</h2><table><tr>{vals}"
                         f"<th>status</th><td>{e(str(row['status']))}</td></tr></table>"
                         f"<img alt='label {k}' src='data:image/png;base64,{b64}'>")
        parts.append("</body></html>\n")
        name = f"{sanitize_name(case)}.html"
        atomic_write_text(safe_join(out_dir, "cases", name), "".join(parts))
        links[case] = f"cases/{name}"
    picks = ["<h2>Cases to look at (by Dice)</h2>"]
    for k in labels:
        for kind, case in pick_cases(rows, int(k)):
            fig = figures.get((case, int(k)))
            if fig is None:
                continue
            link = links.get(case, "")
            picks.append(f"<div><h3>Label {k}: {kind} — <a href='{e(link)}'>{e(case)}</a></h3>"
                         f"<img alt='label {k} {kind}' src='data:image/png;base64,{fig}'></div>")
    return links, "".join(picks) if len(picks) > 1 else ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))
