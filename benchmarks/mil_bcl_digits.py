"""BCL end to end from pixels on digit bags with known instance labels.

Bags are built from scikit-learn's bundled ``load_digits`` (1,797 real 8x8 handwritten digits,
no download), as in Ilse et al.'s MNIST-bags: a bag of ~N(10, 2) digits is positive when it
holds a 9. Train and test bags draw from disjoint halves of the digits. Per EM round the script
reports the test bag AUC / accuracy of the attention-MIL aggregator, the accuracy of the training
pseudo-labels against the true instance labels, and the patch-level AUC of the fine-tuned
classifier. Round 0 is attention-MIL on the frozen, untrained encoder (the baseline).

    PYTHONPATH=. python benchmarks/mil_bcl_digits.py --out out/bcl_digits --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg import config as cfgmod  # noqa: E402
from medseg.metrics.classification import binary_metrics  # noqa: E402
from medseg.wsi.bcl import BCLConfig, run_bcl  # noqa: E402
from medseg.wsi.patches import ArrayPatchSource  # noqa: E402

CFG = Path(__file__).resolve().parents[1] / "configs" / "wsi" / "bcl_digits.yaml"


def digit_bags(images: np.ndarray, digits: np.ndarray, n_bags: int, rng: np.random.Generator, *,
               target: int = 9, mean_size: float = 10, std_size: float = 2) -> ArrayPatchSource:
    """Half positive, half negative bags; a positive bag gets one ``target`` digit plus random
    digits (which may hold more), a negative bag only non-target digits."""
    imgs = ((images.astype(np.float32) / 16.0) - 0.5) / 0.5
    imgs = np.repeat(imgs[:, None], 3, axis=1)  # (N, 3, 8, 8)
    is_t = digits == target
    bags, labels, inst = [], [], []
    for b in range(n_bags):
        n = int(np.clip(round(rng.normal(mean_size, std_size)), 2, None))
        if b % 2:
            idx = np.concatenate([[rng.choice(np.flatnonzero(is_t))], rng.integers(0, len(digits), n - 1)])
            rng.shuffle(idx)
        else:
            idx = rng.choice(np.flatnonzero(~is_t), n)
        bags.append(imgs[idx]); labels.append(int(is_t[idx].any())); inst.append(is_t[idx].astype(np.int64))
    return ArrayPatchSource(bags, labels, instance_labels=inst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/bcl_digits"))
    ap.add_argument("--train-bags", type=int, default=100)
    ap.add_argument("--test-bags", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    d = load_digits()
    raw = cfgmod.apply_overrides(cfgmod.load_yaml(CFG)["bcl"], args.overrides)
    all_hist = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(d.target))
        tr, te = perm[: len(perm) // 2], perm[len(perm) // 2:]
        train = digit_bags(d.images[tr], d.target[tr], args.train_bags, rng)
        test = digit_bags(d.images[te], d.target[te], args.test_bags, rng)
        cfg = BCLConfig.from_dict({**raw, "seed": seed})
        t0 = time.perf_counter()
        hist = run_bcl(train, cfg, args.out / f"seed{seed}", device=torch.device("cpu"), test=test,
                       evaluate=lambda src, p: binary_metrics(src.labels, p))
        print(f"seed {seed} ({time.perf_counter() - t0:.0f} s)")
        print("round  bag_auc  bag_acc  pseudo_label_acc  pseudo_pos_precision  patch_auc  maxpatch_auc")
        for h in hist:
            print(f"{h['round']:5d}  {h['auc']:.3f}    {h['accuracy']:.3f}    {h['pseudo_label_accuracy']:.3f}"
                  f"             {h['pseudo_positive_precision']:.3f}                 "
                  f"{h.get('test_patch_auc', float('nan')):.3f}      {h.get('maxpatch_auc', float('nan')):.3f}")
        all_hist.append([{k: v for k, v in h.items() if k != "config"} for h in hist])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "rounds": all_hist}, indent=1))
    if len(args.seeds) > 1:
        print("mean over seeds")
        for r in range(len(all_hist[0])):
            row = {k: np.mean([h[r][k] for h in all_hist]) for k in ("auc", "accuracy", "pseudo_label_accuracy")}
            print(f"round {r}: bag AUC {row['auc']:.3f}  bag acc {row['accuracy']:.3f}  "
                  f"pseudo-label acc {row['pseudo_label_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
