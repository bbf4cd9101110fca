"""Speed of `mil cv` training: folds one by one (A) against all folds of all repeats as one stacked
network (B), interleaved A/B/A/B on the same data, same seeds, same epochs; the ratio is reported.

    PYTHONPATH=. python benchmarks/bench_mil_cv.py [--data FOX.mat] [--epochs 5] [--repeats 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from medseg.mil.bags import load_bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import MILTrainConfig

FOX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mil" / "andrews_mat" / "fox_100x100_matlab.mat"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=FOX)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bags = load_bags(args.data)
    cfg = MILTrainConfig(epochs=args.epochs)
    times: dict[str, list[float]] = {"A one by one": [], "B stacked": []}
    for _ in range(args.rounds):
        for name, par in (("A one by one", False), ("B stacked", True)):
            t0 = time.perf_counter()
            cross_validate(bags, cfg, folds=10, repeats=args.repeats, seed=0, parallel_folds=par)
            times[name].append(time.perf_counter() - t0)
    a, b = np.median(times["A one by one"]), np.median(times["B stacked"])
    print(f"{args.data.name}: 10-fold x {args.repeats}, {args.epochs} epochs, {len(bags)} bags; "
          f"load average {os.getloadavg()[0]:.1f}")
    for k, v in times.items():
        print(f"  {k}: {', '.join(f'{t:.1f}' for t in v)} s")
    print(f"  ratio A/B {a / b:.1f}x; B per epoch of the whole protocol {b / args.epochs:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
