"""Sixth question of the MIL default (issue 17's optional bagging): an ensemble of networks each trained on
part of the training bags, against the default seed ensemble trained on all of them.

Rule, fixed before any run (2026-12-04, session 11): candidate B = ``bagging: true, inner_folds: 5,
ensemble: 1``: each outer training set is split into 5 stratified inner folds, one network (the default's:
two embedding layers, attention 64, 20 epochs) is trained on the training bags less each inner fold, and
the 5 networks' probabilities are averaged (no refit). The default = 3 networks of different seeds, each on
all the training bags. Both run through :func:`medseg.mil.crossval.cross_validate` (what ``medseg mil cv``
runs: same outer splits and seeds), 10-fold x 1, seed 0, on the six non-goal data sets (BIRDS, PROTEIN,
CORELDOGS, digit bags x 3); a data set's score is the mean over its folds of the per-fold accuracy and AUC
(as ``benchmarks/mil_procedures.py``). B becomes the default if its mean accuracy over the six is at least
0.002 above the default's, its mean AUC is not below the default's, and FOX's 10-fold x 5 protocol through
``medseg mil cv`` with it takes <= 2 minutes on the quiet 2-core machine; otherwise the default stays and
bagging stays an option. The goal benchmarks (MUSK1, MUSK2, FOX, ELEPHANT) are reported after the
decision, not used for it.
(Decided: the default stays; bagging5 0.9557 / AUC 0.9511 against 0.9543 / 0.9478, +0.0014 < 0.002;
docs/benchmarks.md, "Bagging the inner networks".)

Seventh question (2026-12-04, session 11, after the sixth's results), fixed before any run: the six outside data
sets and the goal benchmarks disagreed twice about the number of embedding layers (docs/benchmarks.md); telling
such things apart per data set is what model selection inside each training set is for. Candidate
``select_layers`` = ``select_grid: {embed_layers: [1, 2]}`` (attention 64, 20 epochs as the default), chosen per
outer training set by an inner 3-fold CV on its bags with the one-standard-error rule (one layer unless two are
better by more than a standard error), the chosen candidate's 3 inner networks bagged (``bagging: true,
inner_folds: 3, ensemble: 1``; 3 inner folds and no refit keep the cost at 2 candidates x 3 networks on 2/3 of
the bags, 4 passes over the data against the default's 3). Its two values were picked knowing the goal
benchmarks' results for one and two layers (the two defaults so far); the decision is taken on the six outside
data sets by the sixth question's rule: mean accuracy at least 0.002 above the default's, mean AUC not below,
FOX's protocol <= 2 minutes; otherwise the default stays.
(Decided: the default stays; select_layers 0.9448 / AUC 0.9387 against 0.9543 / 0.9478.)

    PYTHONPATH=. python benchmarks/mil_bagging.py --out out/mil_bag/dev.json
    PYTHONPATH=. python benchmarks/mil_bagging.py --out out/mil_bag/dev.json --decide
    PYTHONPATH=. python benchmarks/mil_bagging.py --out out/mil_bag/dev.json --candidates select_layers
    PYTHONPATH=. python benchmarks/mil_bagging.py --out out/mil_bag/dev.json --decide select_layers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mil_procedures import GOALS, dev_means, load  # noqa: E402

from medseg.mil.crossval import cross_validate  # noqa: E402
from medseg.mil.fit import MILTrainConfig  # noqa: E402

DEV = ["birds", "protein", "corel", "digits", "digits:1", "digits:2"]
CANDIDATES = {"default": {}, "bagging5": {"bagging": True, "inner_folds": 5, "ensemble": 1},
              "select_layers": {"select_grid": {"embed_layers": [1, 2]}, "bagging": True, "inner_folds": 3,
                                "ensemble": 1}}


def score(name: str, overrides: dict, folds: int, seed: int) -> dict:
    res = cross_validate(load(name), MILTrainConfig.from_dict(overrides), folds=folds, repeats=1, seed=seed)
    return {"accuracy": res["accuracy_mean"], "auc": res["auc_mean"], "seconds": res["seconds"],   # over the folds
            "configs_chosen": res.get("configs_chosen")}


def decide(res: dict, cand: str) -> str:
    rows = [{"data": d, "procedures": {c: res[f"{d}/{c}"] for c in ("default", cand)}} for d in DEV]
    mean = dev_means(rows, ["default", cand])
    for c, (a, u) in mean.items():
        print(f"  {c}: accuracy {a:.4f}, AUC {u:.4f}")
    ok = mean[cand][0] >= mean["default"][0] + 0.002 and mean[cand][1] >= mean["default"][1]
    verdict = f"{cand} (if FOX's protocol takes <= 2 min)" if ok else "default stays"
    print(f"decision: {verdict}")
    return verdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", nargs="+", default=DEV)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", nargs="+", default=["default", "bagging5"], choices=list(CANDIDATES))
    ap.add_argument("--decide", nargs="?", const="bagging5", choices=list(CANDIDATES)[1:],
                    help="apply the rule to this candidate (default: bagging5, the sixth question)")
    args = ap.parse_args()
    res = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.decide:
        decide(res, args.decide)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.data:
        for cand in args.candidates:
            overrides = CANDIDATES[cand]
            key = f"{name}/{cand}"
            if key in res:
                continue
            res[key] = score(name, overrides, args.folds, args.seed)
            args.out.write_text(json.dumps(res, indent=1))
            tag = " (goal data set: reported, not used)" if name in GOALS else ""
            print(f"{key}: {res[key]['accuracy']:.4f} (AUC {res[key]['auc']:.4f}), "
                  f"{res[key]['seconds']:.0f} s{tag}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
