"""Paired comparison report: ``medseg evaluate --pred A --pred B --ref R --out DIR``.

Each method is evaluated into ``DIR/<method>/`` (metrics.csv, summary.json, report.html); then
``DIR/comparison.csv`` (one row per method, label and metric), ``DIR/comparison.json`` (the same
plus the excluded cases and per-case pairs), one paired-dots PNG per metric
(``DIR/paired_<metric>.png``: every case a line from the baseline's value to the method's, one panel
per label) and ``DIR/comparison.html`` embedding them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.fsutil import atomic_write_text, safe_join, sanitize_name
from medseg.metrics.paired import paired_comparison
from medseg.report.html import SORT_JS, metric_title
from medseg.report.writers import figure_png, write_json

log = logging.getLogger("medseg.report")

COMPARISON_COLUMNS = ("baseline", "method", "label", "metric", "n", "mean_baseline", "mean_method", "mean_diff",
                      "ci95_low", "ci95_high", "median_diff", "wilcoxon_p", "holm_p")


def method_names(preds: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """Names of the prediction folders (given, or the folder names made unique and file-safe)."""
    if names:
        if len(names) != len(preds):
            from medseg.errors import ConfigError

            raise ConfigError(f"{len(names)} method names for {len(preds)} --pred folders", code="bad_params")
        raw = [str(n) for n in names]
    else:
        raw = [Path(p).name or "pred" for p in preds]
    out: list[str] = []
    for i, n in enumerate(raw):
        base = sanitize_name(n)
        name = base if base not in out else f"{base}_{i + 1}"
        out.append(name)
    return out


def paired_dots_png(per_case: dict[str, dict[str, list[tuple[str, float, float]]]], metric: str,
                    baseline: str, method: str) -> bytes:
    """PNG bytes: one panel per label; each case a line from its baseline value to its method value."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    labels = list(per_case)
    fig = Figure(figsize=(max(3.0, 2.4 * len(labels)), 3.2), dpi=100)
    for i, lab in enumerate(labels):
        ax = fig.add_subplot(1, len(labels), i + 1)
        for _case, a, b in per_case[lab].get(metric, []):
            colour = "tab:green" if b > a else ("tab:red" if b < a else "0.5")
            ax.plot([0, 1], [a, b], "-o", color=colour, alpha=0.7, markersize=3, linewidth=1)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([baseline, method], fontsize=8)
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(f"label {lab}", fontsize=9)
        if i == 0:
            ax.set_ylabel(metric_title(metric))
        ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))


def _csv_rows(comparison: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for comp in comparison["comparisons"]:
        for r in comp["results"]:
            rows.append([comparison["baseline"], comp["method"], r["label"], r["metric"], r["n"], r["mean_baseline"],
                         r["mean_method"], r["mean_diff"], r["ci95"][0], r["ci95"][1], r["median_diff"],
                         r["wilcoxon_p"], r["holm_p"]])
    return rows


def write_comparison(comparison: dict[str, Any], metrics: Sequence[str], out_dir: str | Path) -> dict[str, Path]:
    """:func:`_write_comparison` holding the output folder's lock (:func:`medseg.fsutil.output_lock`)."""
    from medseg.fsutil import output_lock

    with output_lock(out_dir):
        return _write_comparison(comparison, metrics, out_dir)


def _write_comparison(comparison: dict[str, Any], metrics: Sequence[str], out_dir: str | Path) -> dict[str, Path]:
    """Write comparison.csv / .json / .html and the paired-dots PNGs. Returns the paths."""
    from medseg.csvsafe import csv_text

    out = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPARISON_COLUMNS)
    for row in _csv_rows(comparison):
        w.writerow([csv_text(v) if isinstance(v, str) else (repr(v) if isinstance(v, float) else v) for v in row])
    paths = {"comparison_csv": atomic_write_text(safe_join(out, "comparison.csv"), buf.getvalue()),
             "comparison_json": write_json(comparison, safe_join(out, "comparison.json"))}
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>medseg paired comparison</title><style>"
             "body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}td.l{text-align:left}"
             "img{max-width:100%}</style></head><body><h1>Paired comparison</h1>",
             f"<p>Baseline <b>{e(comparison['baseline'])}</b>; differences are method − baseline per case. "
             "Mean difference with a percentile-bootstrap 95% CI; two-sided Wilcoxon signed-rank p-value "
             "(scipy.stats.wilcoxon on the per-case differences); Holm-adjusted over the labels of each metric. "
             "Per-method reports: " + ", ".join(f"<a href='{e(m)}/report.html'>{e(m)}</a>"
                                                for m in comparison["methods"]) + ".</p>"]
    for comp in comparison["comparisons"]:
        method = comp["method"]
        parts.append(f"<h2>{e(method)} vs {e(comparison['baseline'])}</h2><p>{comp['n_paired_cases']} cases "
                     "scored in both.</p>")
        if comp["excluded"]:
            parts.append("<p><b>Left out of the paired statistics</b> (not scored in both): "
                         + ", ".join(f"{e(c)} ({e(why)})" for c, why in comp["excluded"].items()) + "</p>")
        parts.append("<table class='sortable'><tr><th>label</th><th>metric</th><th>n</th><th>baseline mean</th>"
                     "<th>method mean</th><th>mean diff [95% CI]</th><th>median diff</th><th>Wilcoxon p</th>"
                     "<th>Holm p</th></tr>")
        for r in comp["results"]:
            lo, hi = r["ci95"]
            parts.append(f"<tr><td class='l'>{r['label']}</td><td class='l'>{e(metric_title(r['metric']))}</td>"
                         f"<td>{r['n']}</td><td>{_num(r['mean_baseline'])}</td><td>{_num(r['mean_method'])}</td>"
                         f"<td>{_num(r['mean_diff'])} [{_num(lo)}, {_num(hi)}]</td><td>{_num(r['median_diff'])}</td>"
                         f"<td>{_num(r['wilcoxon_p'])}</td><td>{_num(r['holm_p'])}</td></tr>")
        parts.append("</table>")
        for m in metrics:
            png = paired_dots_png(comp["per_case"], m, comparison["baseline"], method)
            name = f"paired_{sanitize_name(method)}_{sanitize_name(m)}.png"
            paths[name] = _write_bytes(safe_join(out, name), png)
            parts.append(f"<div><img alt='paired {e(m)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode('ascii')}'></div>")
    parts.append(SORT_JS + "</body></html>\n")
    paths["comparison_html"] = atomic_write_text(safe_join(out, "comparison.html"), "".join(parts))
    return paths


def _write_bytes(path: Path, data: bytes) -> Path:
    from medseg.fsutil import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def run_comparison(preds: Sequence[str | Path], ref: str | Path, out_dir: str | Path, *,
                   names: Sequence[str] | None = None, **evaluate_kwargs: Any) -> tuple[dict, dict, dict[str, Path]]:
    """Evaluate each prediction folder into ``out_dir/<name>/`` and compare them (first = baseline).

    Returns ``(results by name, comparison, paths)``.
    """
    from medseg.report.evaluation import run_evaluation

    method = method_names(preds, names)
    out = Path(out_dir)
    results = {}
    for name, pred in zip(method, preds):
        res, _ = run_evaluation(pred, ref, safe_join(out, name), **evaluate_kwargs)
        results[name] = res
    metrics = results[method[0]].metrics
    comparison = paired_comparison({n: r.rows for n, r in results.items()}, metrics)
    paths = write_comparison(comparison, metrics, out)
    for comp in comparison["comparisons"]:
        for c, why in comp["excluded"].items():
            log.warning("paired comparison %s vs %s: case %s left out (%s)", comp["method"], method[0], c, why)
    return results, comparison, paths
