"""Scoring a cohort end to end: the whole ``medseg evaluate`` process vs a script calling MONAI.

Both are timed as separate processes (interpreter start, imports, reading every file, scoring
Dice, IoU, HD95 and NSD of every label, writing a CSV) on the same files: hippocampus reference
labels and perturbed copies as predictions (written once to a temporary folder). medseg runs in
its default (surface-distance) mode and in ``--mode monai``; the latter's numbers are compared with
the MONAI script's.

``--assd`` measures what adding ASSD costs (issue 15): A/B interleaved, (a) scoring in process
(``evaluate_arrays`` on arrays already in memory, default metrics vs default + ``assd_mm``), (b) the
whole ``medseg evaluate`` process with and without ``--metrics dice,iou,hd95,nsd,assd``, and (c)
MONAI computing the same five metrics (``compute_average_surface_distance(symmetric=True)`` added)
against ``medseg evaluate --mode monai`` with ASSD; it prints the load average before and after.

Usage: PYTHONPATH=. python benchmarks/bench_evaluate_cohort.py [--cases 40] [--workers 1] [--assd --repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import DATA, perturb  # noqa: E402

from medseg.io import read_volume, write_volume  # noqa: E402

MONAI_SCRIPT = r'''
import csv, sys, warnings
from pathlib import Path
import nibabel as nib, numpy as np, torch
from monai.metrics import compute_dice, compute_iou, compute_hausdorff_distance, compute_surface_dice
from monai.metrics import compute_average_surface_distance
pred_dir, ref_dir, out, tol = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
with_assd = len(sys.argv) > 5 and sys.argv[5] == "assd"
rows = []
for rf in sorted(ref_dir.glob("*.nii.gz")):
    ref_img = nib.load(rf)
    ref = np.asarray(ref_img.dataobj).astype(np.int64)
    pred = np.asarray(nib.load(pred_dir / rf.name).dataobj).astype(np.int64)
    spacing = [float(s) for s in ref_img.header.get_zooms()[:3]]
    n = int(max(ref.max(), pred.max())) + 1
    y = torch.nn.functional.one_hot(torch.from_numpy(ref), n).permute(3, 0, 1, 2)[None].float()
    yp = torch.nn.functional.one_hot(torch.from_numpy(pred), n).permute(3, 0, 1, 2)[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_dice(yp, y, include_background=False)
        j = compute_iou(yp, y, include_background=False)
        h = compute_hausdorff_distance(yp, y, include_background=False, percentile=95, spacing=spacing)
        s = compute_surface_dice(yp, y, [tol] * (n - 1), include_background=False, spacing=spacing)
        if with_assd:
            a = compute_average_surface_distance(yp, y, include_background=False, symmetric=True, spacing=spacing)
    name = rf.name[:-7]
    for c in range(n - 1):
        extra = [float(a[0, c])] if with_assd else []
        rows.append([name, c + 1, float(d[0, c]), float(j[0, c]), float(h[0, c]), float(s[0, c])] + extra)
with open(out, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["case", "label", "dice", "iou", "hd95_mm", "nsd"] + (["assd_mm"] if with_assd else []))
    w.writerows(rows)
'''


def make_cohort(root: Path, n: int) -> tuple[Path, Path]:
    pred, ref = root / "pred", root / "ref"
    pred.mkdir()
    ref.mkdir()
    for i, f in enumerate(sorted((DATA / "hippocampus" / "labelsTr").glob("*.nii.gz"))[:n]):
        v = read_volume(f, is_label=True)
        write_volume(v, ref / f.name)
        write_volume(v.with_array(perturb(v.array, i).astype(np.uint8)), pred / f.name)
    return pred, ref


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def read_rows(path: Path, metrics=("dice", "iou", "hd95_mm", "nsd")) -> dict[tuple[str, int], list[float]]:
    with open(path, newline="") as fh:
        return {(r["case"], int(r["label"])): [float(r[m]) for m in metrics] for r in csv.DictReader(fh)}


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def assd_cost(pred: Path, ref: Path, root: Path, args) -> None:
    """A/B interleaved: with vs without ASSD, in process and whole process; and vs MONAI with ASSD."""
    from medseg.metrics.evaluate import evaluate_arrays

    py = sys.executable
    print(f"load average before: {load()} (1, 5, 15 min; 2 cores)")
    cases = [(read_volume(p, is_label=True), read_volume(ref / p.name, is_label=True)) for p in sorted(pred.iterdir())]

    def score(extra):
        t = time.perf_counter()
        for pv, rv in cases:
            evaluate_arrays(pv.array, rv.array, spacing_mm=rv.spacing_mm, labels=[1, 2], tolerance_mm=args.tol,
                            metrics=extra)
        return time.perf_counter() - t

    score(None)  # warm-up (imports, caches)
    t_a, t_b = [], []
    for r in range(args.repeat * 3):
        order = [(t_a, None), (t_b, ["assd_mm"])] if r % 2 == 0 else [(t_b, ["assd_mm"]), (t_a, None)]
        for acc, extra in order:
            acc.append(score(extra))
    a, b = float(np.median(t_a)), float(np.median(t_b))
    print(f"in process, {len(cases)} cases x 2 labels, median of {len(t_a)} interleaved runs: default {a:.3f} s, "
          f"+ASSD {b:.3f} s, ratio {b / a:.3f}")
    common = ["--pred", str(pred), "--ref", str(ref), "--nsd-tolerance-mm", str(args.tol), "--no-progress"]
    w_a, w_b = [], []
    for r in range(args.repeat):
        runs = [(w_a, []), (w_b, ["--metrics", "dice,iou,hd95,nsd,assd"])]
        for acc, extra in (runs if r % 2 == 0 else runs[::-1]):
            acc.append(timed([py, "-m", "medseg", "evaluate", *common, "--out", str(root / "ab"), *extra]))
    a, b = float(np.median(w_a)), float(np.median(w_b))
    print(f"whole process, median of {len(w_a)} interleaved runs: default {a:.2f} s, +ASSD {b:.2f} s, "
          f"ratio {b / a:.3f}")
    t_mon = timed([py, str(root / "monai_eval.py"), str(pred), str(ref), str(root / "monai_assd.csv"), str(args.tol),
                   "assd"])
    t_med = timed([py, "-m", "medseg", "evaluate", *common, "--out", str(root / "ma"), "--mode", "monai",
                   "--metrics", "dice,iou,hd95,nsd,assd"])
    five = ("dice", "iou", "hd95_mm", "nsd", "assd_mm")
    ours, theirs = read_rows(root / "ma" / "metrics.csv", five), read_rows(root / "monai_assd.csv", five)
    diff = max(abs(x - y) / max(1.0, abs(y)) for k in theirs for x, y in zip(ours[k], theirs[k]))
    print(f"MONAI script with ASSD {t_mon:.2f} s vs medseg --mode monai with ASSD {t_med:.2f} s: "
          f"{t_mon / t_med:.1f}x; max rel diff {diff:.1e}")
    print(f"load average after: {load()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tol", type=float, default=2.0)
    ap.add_argument("--assd", action="store_true", help="measure the cost of adding ASSD (A/B interleaved)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pred, ref = make_cohort(root, args.cases)
        (root / "monai_eval.py").write_text(MONAI_SCRIPT)
        if args.assd:
            assd_cost(pred, ref, root, args)
            return
        common = ["--pred", str(pred), "--ref", str(ref), "--nsd-tolerance-mm", str(args.tol), "--no-progress",
                  "--workers", str(args.workers)]
        t_med = timed([py, "-m", "medseg", "evaluate", *common, "--out", str(root / "m1")])
        t_medm = timed([py, "-m", "medseg", "evaluate", *common, "--out", str(root / "m2"), "--mode", "monai"])
        t_mon = timed([py, str(root / "monai_eval.py"), str(pred), str(ref), str(root / "monai.csv"), str(args.tol)])
        ours, theirs = read_rows(root / "m2" / "metrics.csv"), read_rows(root / "monai.csv")
        diff = max(abs(a - b) for k in theirs for a, b in zip(ours[k], theirs[k]))
        print(f"{args.cases} hippocampus cases x 2 labels, NSD tolerance {args.tol} mm, workers {args.workers}")
        print("| peer | peer s | medseg s | ratio (peer/medseg) | max abs diff |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| MONAI script (Dice, IoU, HD95, NSD; CSV) | {t_mon:.2f} | {t_medm:.2f} (--mode monai) | "
              f"{t_mon / t_medm:.1f}x | {diff:.1e} |")
        print(f"| MONAI script | {t_mon:.2f} | {t_med:.2f} (default surfel mode, + summary.json + report.html) | "
              f"{t_mon / t_med:.1f}x | (different HD95/NSD definitions) |")


if __name__ == "__main__":
    main()
