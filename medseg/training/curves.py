"""Training curves: one CSV row per epoch and a PNG plot (loss and validation Dice)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from medseg.csvsafe import csv_text
from medseg.fsutil import atomic_path, atomic_write_text


def write_csv(history: list[dict], path: str | Path) -> Path:
    """Write ``history`` (list of flat dicts, one per epoch) as CSV, atomically."""
    cols: list[str] = []
    for row in history:
        cols.extend(k for k in row if k not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if v is None else csv_text(v)) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss (left axis) and validation Dice per label (right axis) against the epoch, as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(ep, [r["train_loss"] for r in history], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    dice_cols = [k for k in history[-1] if k.startswith("val_dice")]
    for k in dice_cols:
        pts = [(r["epoch"], r[k]) for r in history if r.get(k) is not None and not math.isnan(r[k])]
        if pts:
            ax2.plot(*zip(*pts), marker=".", label=k.replace("val_dice_", "Dice "))
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
