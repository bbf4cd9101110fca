"""Slide-level evaluation report: ROC and PR curves (PNG files, embedded in the HTML), AUC with its
CI, the metrics and confusion matrix at the threshold, and every slide left out with the reason."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from medseg.fsutil import atomic_path, atomic_write_text, safe_join
from medseg.report.writers import figure_png, write_json


def _fig_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def roc_png(res: dict[str, Any], title: str) -> bytes:
    def draw(ax):
        ax.plot(res["roc"]["fpr"], res["roc"]["tpr"], drawstyle="default", color="tab:blue")
        ax.plot([0, 1], [0, 1], ":", color="0.5")
        t = res["at_threshold"]
        if not math.isnan(t["specificity"]) and not math.isnan(t["sensitivity"]):
            ax.plot([1 - t["specificity"]], [t["sensitivity"]], "o", color="tab:red",
                    label=f"threshold {t['threshold']:.3g}")
            ax.legend(loc="lower right", fontsize=8)
        lo, hi = res["auc_ci95"]
        ax.set_title(f"{title}ROC, AUC {res['auc']:.3f} [{lo:.3f}, {hi:.3f}]", fontsize=9)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
    return _fig_png(draw)


def pr_png(res: dict[str, Any], title: str) -> bytes:
    def draw(ax):
        ax.step(res["pr"]["recall"], res["pr"]["precision"], where="post", color="tab:blue")
        ax.axhline(res["n_positive"] / res["n"], linestyle=":", color="0.5")
        ax.set_title(f"{title}PR, AP {res['average_precision']:.3f}", fontsize=9)
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.set_ylim(0, 1.02)
    return _fig_png(draw)


def _save(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def write_slide_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """:func:`_write_slide_report` holding the output folder's lock (:func:`medseg.fsutil.output_lock`)."""
    from medseg.fsutil import output_lock

    with output_lock(out_dir):
        return _write_slide_report(result, out_dir)


def _write_slide_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``roc.png``, ``pr.png``, ``slide_metrics.json``, ``confusion.csv`` and ``report.html`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = result["test"]
    classes = result["classes"]
    roc, pr = roc_png(res, ""), pr_png(res, "")
    t = res["at_threshold"]
    (tn, fp), (fn, tp) = t["confusion_matrix"]
    conf = (f"true\\predicted,{classes[0]},{classes[1]}\n{classes[0]},{tn},{fp}\n{classes[1]},{fn},{tp}\n")
    paths = {"roc": _save(safe_join(out, "roc.png"), roc), "pr": _save(safe_join(out, "pr.png"), pr),
             "json": write_json(result, safe_join(out, "slide_metrics.json")),
             "confusion": atomic_write_text(safe_join(out, "confusion.csv"), conf)}
    e = html.escape
    lo, hi = res["auc_ci95"]

    def num(v: float) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medseg slide evaluation</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}</style></head><body>",
        "<h1>Slide-level evaluation</h1>",
        f"<p>Predictions <code>{e(str(result['pred']))}</code>, labels <code>{e(str(result['labels']))}</code>. "
        f"{res['n']} slides scored ({res['n_positive']} {e(classes[1])}, {res['n_negative']} {e(classes[0])}).</p>",
        f"<p>AUC {num(res['auc'])} [95% CI {num(lo)}, {num(hi)}] (percentile bootstrap over slides, "
        f"{res['n_boot']} resamples, seed {res['seed']}); average precision {num(res['average_precision'])}.</p>",
        f"<p>Threshold {t['threshold']:.6g} ({e(result['threshold_source'])}): positive when the probability "
        ">= threshold.</p>",
        "<table><tr><th>accuracy</th><th>sensitivity</th><th>specificity</th><th>precision</th></tr>"
        f"<tr><td>{num(t['accuracy'])}</td><td>{num(t['sensitivity'])}</td><td>{num(t['specificity'])}</td>"
        f"<td>{num(t['precision'])}</td></tr></table>",
        f"<h2>Confusion matrix</h2><table><tr><th>true \\ predicted</th><th>{e(classes[0])}</th>"
        f"<th>{e(classes[1])}</th></tr><tr><th>{e(classes[0])}</th><td>{tn}</td><td>{fp}</td></tr>"
        f"<tr><th>{e(classes[1])}</th><td>{fn}</td><td>{tp}</td></tr></table>",
        "<h2>Curves</h2>",
        f"<img alt='ROC curve' src='data:image/png;base64,{base64.b64encode(roc).decode('ascii')}'>",
        f"<img alt='PR curve' src='data:image/png;base64,{base64.b64encode(pr).decode('ascii')}'>",
    ]
    left = result.get("left_out") or {}
    if left:
        parts.append("<h2>Slides left out</h2><ul>" + "".join(f"<li>{e(s)}: {e(w)}</li>" for s, w in left.items())
                     + "</ul>")
    parts.append("</body></html>\n")
    paths["report"] = atomic_write_text(safe_join(out, "report.html"), "".join(parts))
    return paths
