"""Markdown table of `medseg mil cv` results next to Ilse et al. (ICML 2018, Table 2).

    PYTHONPATH=. python benchmarks/mil_table.py out/mil/*/summary.json

(``summary.partial.json`` files of unfinished runs work too: the repeats column says how many ran.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# Ilse et al. 2018, 10-fold CV accuracy (5 repeats): attention, gated attention
ILSE = {"musk1": (0.892, 0.900), "musk2": (0.858, 0.863), "fox": (0.615, 0.603), "elephant": (0.868, 0.857)}


def dataset_name(path: str) -> str:
    """The goal data set a file holds ("musk1", "fox", ...), else the file name."""
    name = Path(path).name.lower()
    return next((k for k in ILSE if name.startswith(k)), name)


def ilse(ds: str, model: str) -> float:
    """Ilse et al.'s accuracy for a data set and model (gated attention or not); NaN for other data sets."""
    return ILSE.get(ds, (float("nan"),) * 2)[1 if model.startswith("gated") else 0]


def row_order(ds: str, model: str) -> tuple[int, str]:
    """Sort key of a table row: the goals in Ilse et al.'s order, then the other data sets."""
    return list(ILSE).index(ds) if ds in ILSE else len(ILSE), model


def main(paths: list[str]) -> int:
    print("| data set | model | folds x repeats | accuracy (± sd over folds) | sd of repeat means | 95% CI | "
          "AUC (± sd over folds) | epochs: folds (inner CV choice) | Ilse et al. acc. |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for p in paths:
        s = json.loads(Path(p).read_text())
        ds, model = dataset_name(s["data"]), s["config"]["model"]
        rows.append((ds, model, s, ilse(ds, model)))
    for ds, model, s, ref in sorted(rows, key=lambda r: row_order(r[0], r[1])):
        lo, hi = s["accuracy_ci95"]
        reps = s.get("accuracy_repeat_means", [])
        rsd = f"{np.std(reps, ddof=1):.3f}" if len(reps) > 1 else "-"
        chosen = s.get("epochs_chosen") or {str(s["config"]["epochs"]): len(s["per_fold"])}
        ep = ", ".join(f"{e}: {n}" for e, n in sorted(chosen.items(), key=lambda kv: int(kv[0])))
        print(f"| {ds.upper()} | {model} | {s['folds']} x {s['repeats']} | {s['accuracy_mean']:.3f} ± "
              f"{s['accuracy_std']:.3f} | {rsd} | {lo:.3f}-{hi:.3f} | {s['auc_mean']:.3f} ± {s['auc_std']:.3f} | "
              f"{ep} | {ref:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
