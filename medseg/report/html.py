"""A self-contained HTML report: box plots (embedded PNG), per-label summary, per-case table."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.fsutil import atomic_write_text
from medseg.metrics.catalog import DEFAULT_METRICS, spec_of
from medseg.report.writers import figure_png

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "nsd": "NSD"}
#: box plots show at most this many labels (a case with 8,000 labels would take hours to draw; the
#: tables and metrics.csv keep every label)
MAX_PLOT_LABELS = 40
# click a header to sort its table (numbers numerically, '–' last); no external script
SORT_JS = (
    "<script>document.querySelectorAll('table.sortable th').forEach(function(th){th.style.cursor='pointer';"
    "th.addEventListener('click',function(){var t=th.closest('table'),i=Array.prototype.indexOf.call("
    "th.parentNode.children,th),rows=Array.prototype.slice.call(t.querySelectorAll('tr')).slice(1),"
    "asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';function v(r){var s=r.children[i]?r.children[i]"
    ".textContent.trim():'';var n=parseFloat(s);return isNaN(n)?s:n;}rows.sort(function(a,b){var x=v(a),"
    "y=v(b);if(typeof x!==typeof y){return typeof x==='number'?-1:1;}return (x<y?-1:x>y?1:0)*(asc?1:-1);});"
    "rows.forEach(function(r){t.appendChild(r);});});});</script>"
)


def metric_title(column: str) -> str:
    try:
        return spec_of(column).title
    except KeyError:
        return column


def _label_title(label: str, entry: dict[str, Any]) -> str:
    return f"{label} {entry['name']}" if entry.get("name") else str(label)


def box_plot_png(rows: Sequence[dict[str, Any]], summary: dict[str, Any], metric: str) -> bytes:
    """PNG bytes of one box plot per label for ``metric`` (nan left out; failed cases with the worst
    values they were given)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    labels = list(summary)[:MAX_PLOT_LABELS]
    by_label: dict[str, list[float]] = {lab: [] for lab in labels}
    for r in rows:  # one pass over the rows, whatever the number of labels
        vals = by_label.get(str(r["label"]))
        if vals is not None:
            v = float(r[metric])
            if not math.isnan(v):
                vals.append(v)
    data = [by_label[lab] for lab in labels]
    fig = Figure(figsize=(max(4.0, 0.45 * len(labels) + 2.0), 3.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot([d if d else [math.nan] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([_label_title(lab, summary[lab]) for lab in labels], rotation=60 if len(labels) > 8 else 0,
                       ha="right" if len(labels) > 8 else "center", fontsize=7 if len(labels) > 8 else 9)
    ax.set_ylabel(metric_title(metric))
    ax.set_title(f"{metric_title(metric)} per label")
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def render_html(rows: Sequence[dict[str, Any]], summary: dict[str, Any], *, meta: dict[str, Any],
                extra_html: str = "", case_pages: dict[str, str] | None = None) -> str:
    """The report page as a string. ``meta`` holds pred, ref, mode_description, tolerances, pairing."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medseg evaluation</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        "td.l{text-align:left}tr.err td{background:#fdd}tr.empty td{background:#ffd}img{max-width:100%}</style>",
        "</head><body><h1>Segmentation evaluation</h1>",
        "<p>Predictions: <code>{}</code><br>References: <code>{}</code></p>".format(
            e(str(meta.get("pred", ""))), e(str(meta.get("ref", "")))),
        "<h2>Metric definitions</h2><ul>",
        f"<li>Mode <b>{e(str(meta.get('mode', '')))}</b>: {e(str(meta.get('mode_description', '')))}</li>",
        "<li>Dice and IoU from voxel counts; HD95 = symmetric 95th percentile Hausdorff distance in mm "
        "with the voxel spacing of each case; NSD = normalised surface Dice at the tolerance below.</li>",
        f"<li>NSD tolerance (mm): {e(str(meta.get('nsd_tolerance_mm', '')))}</li>",
        "<li>Empty cases are kept: both empty gives Dice = IoU = NSD = 1 and HD95 = 0; one empty gives "
        "Dice = IoU = NSD = 0 and HD95 = the image diagonal in mm. Failed or missing cases are counted as "
        "failed (their treatment in the statistics below).</li>",
        "<li>Summary: mean, sample std, median, IQR, 95% CI of the mean by percentile bootstrap "
        f"({meta.get('n_boot', '')} resamples, seed {meta.get('seed', '')}).</li></ul>",
    ]
    metrics = list(meta.get("metrics") or DEFAULT_METRICS)
    if meta.get("empty_reference_description"):
        parts.insert(-1, f"<li>Empty reference: {e(str(meta['empty_reference_description']))}</li>")
    if meta.get("failed_policy_description"):
        parts.insert(-1, f"<li>Failed or missing cases: {e(str(meta['failed_policy_description']))}</li>")
    pred_only, ref_only = meta.get("pred_only") or [], meta.get("ref_only") or []
    failed = meta.get("failed") or {}
    parts.append(f"<h2>Cases</h2><p>{len(meta.get('cases', []))} cases scored or failed; "
                 f"{len(failed)} failed; {len(ref_only)} references without prediction; "
                 f"{len(pred_only)} predictions without reference.</p>")
    if failed:
        parts.append("<p>Failed: " + ", ".join(f"{e(c)} ({e(s)})" for c, s in sorted(failed.items())) + "</p>")
    if pred_only:
        parts.append("<p>Not scored (no reference): " + ", ".join(e(c) for c in pred_only) + "</p>")

    parts.append("<h2>Summary per label</h2><table class='sortable'><tr><th>label</th><th>n</th>"
                 "<th>both empty</th><th>pred empty</th><th>ref empty</th><th>failed</th>")
    for m in metrics:
        t = e(metric_title(m))
        parts.append(f"<th>{t} mean [95% CI]</th><th>{t} median (IQR)</th><th>{t} mean w/o both-empty</th>"
                     f"<th>{t} left out</th>")
    parts.append("</tr>")
    for lab, ent in summary.items():
        parts.append(f"<tr><td class='l'>{e(_label_title(lab, ent))}</td><td>{ent['n_cases']}</td>"
                     f"<td>{ent['n_both_empty']}</td><td>{ent['n_pred_empty']}</td><td>{ent['n_ref_empty']}</td>"
                     f"<td>{ent['n_failed']}</td>")
        for m in metrics:
            st = ent[m]
            lo, hi = st["ci95"]
            parts.append(f"<td>{_num(st['mean'])} [{_num(lo)}, {_num(hi)}]</td>"
                         f"<td>{_num(st['median'])} ({_num(st['iqr'])})</td>"
                         f"<td>{_num(st['mean_without_both_empty'])}</td><td>{st.get('n_left_out', 0)}</td>")
        parts.append("</tr>")
    parts.append("</table>")

    parts.append(extra_html)
    if summary:
        parts.append("<h2>Distributions</h2>")
        if len(summary) > MAX_PLOT_LABELS:
            parts.append(f"<p>{len(summary)} labels: the box plots show the first {MAX_PLOT_LABELS}; the tables "
                         "and metrics.csv hold every label.</p>")
        for m in metrics:
            b64 = base64.b64encode(box_plot_png(rows, summary, m)).decode("ascii")
            parts.append(f"<div><img alt='{e(metric_title(m))} box plot' src='data:image/png;base64,{b64}'></div>")

    parts.append("<h2>Per case</h2><p>Rows of failed or missing cases (red) hold the worst values they "
                 "enter the statistics with (unless excluded).</p><table class='sortable'><tr><th>case</th>"
                 "<th>label</th>" + "".join(f"<th>{e(metric_title(m))}</th>" for m in metrics)
                 + "<th>status</th></tr>")
    page_of = case_pages or {}
    for r in rows:
        st = str(r["status"])
        cls = "err" if st.startswith("error") else ("empty" if st != "ok" else "")
        name = f"{r['label']} {r['label_name']}" if r.get("label_name") else str(r["label"])
        case = e(str(r["case"]))
        if str(r["case"]) in page_of:
            case = f"<a href='{e(page_of[str(r['case'])])}'>{case}</a>"
        flag = " (worst value)" if st.startswith("error") and not math.isnan(float(r["dice"])) else ""
        parts.append(f"<tr class='{cls}'><td class='l'>{case}</td><td class='l'>{e(name)}</td>"
                     + "".join(f"<td>{_num(r.get(m), 3 if m.endswith('_mm') else 4)}</td>" for m in metrics)
                     + f"<td class='l'>{e(st)}{flag}</td></tr>")
    parts.append("</table>" + SORT_JS + "</body></html>\n")
    return "".join(parts)


def write_html(rows: Sequence[dict[str, Any]], summary: dict[str, Any], path: str | Path, *,
               meta: dict[str, Any], extra_html: str = "", case_pages: dict[str, str] | None = None) -> Path:
    """Write the report atomically (``extra_html``: a section after the summary; ``case_pages``:
    case -> link of its page)."""
    return atomic_write_text(path, render_html(rows, summary, meta=meta, extra_html=extra_html,
                                               case_pages=case_pages))
