"""Fixed epochs vs the inner-CV epoch choice on MIL data sets *other* than the four benchmarks.

Used to decide medseg's MIL default without looking at MUSK1/MUSK2/FOX/ELEPHANT test folds: for each
outer fold it runs the inner 3-fold CV on the training bags (as ``medseg mil cv`` does) and one
training run with snapshots at every candidate, so the test accuracy of "fixed 40 epochs", "inner CV,
accuracy first" (the default rule) and "inner CV, log-loss first" come from the same networks.

    PYTHONPATH=. python benchmarks/mil_dev_compare.py ../shared/data/mil/birds_brown_creeper.csv attention_mil \
        out/dev/birds_att.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np

from medseg.metrics.classification import accuracy
from medseg.mil.bags import load_bags
from medseg.mil.fit import MILTrainConfig, fit_mil_path, predict_bags, stratified_folds
from medseg.mil.select import inner_cv_scores, pick_epochs


def main(data: str, model: str, out: str, folds: int = 10, seed: int = 0) -> int:
    bags = load_bags(data)
    cfg = replace(MILTrainConfig(), model=model, select_epochs=[5, 10, 20, 40])  # the candidates of procedure B
    marks = sorted(cfg.select_epochs)
    rows = []
    for f, test in enumerate(stratified_folds(bags.labels, folds, np.random.default_rng(seed))):
        train = bags.subset(np.setdiff1d(np.arange(len(bags)), test))
        s = seed + f
        scores = inner_cv_scores(train, cfg, seed=s)
        path = fit_mil_path(train, cfg, marks, seed=s)
        acc = {e: accuracy(bags.labels[test], predict_bags(path[e], bags.subset(test)) >= cfg.threshold)
               for e in marks}
        by_acc, by_loss = pick_epochs(scores), min(scores, key=lambda e: (scores[e][1], e))
        rows.append({"fold": f, "acc": acc, "pick_acc": by_acc, "pick_loss": by_loss})
        print(f, acc, by_acc, by_loss, flush=True)
    res = {"data": data, "model": model,
           "fixed_40": float(np.mean([r["acc"][40] for r in rows])),
           "inner_cv_accuracy_rule": float(np.mean([r["acc"][r["pick_acc"]] for r in rows])),
           "inner_cv_logloss_rule": float(np.mean([r["acc"][r["pick_loss"]] for r in rows])),
           "per_epochs": {e: float(np.mean([r["acc"][e] for r in rows])) for e in marks}, "folds": rows}
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "folds"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
