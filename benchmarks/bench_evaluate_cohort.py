"""Scoring a cohort end to end: the whole ``medseg evaluate`` process vs a script calling MONAI.

Both are timed as separate processes (interpreter start, imports, reading every file, scoring
Dice, IoU, HD95 and NSD of every label, writing a CSV) on the same files: hippocampus reference
labels and perturbed copies as predictions (written once to a temporary folder). medseg runs in
its default (surface-distance) mode and in ``--mode monai``; the latter's numbers are compared with
the MONAI script's.

Usage: PYTHONPATH=. python benchmarks/bench_evaluate_cohort.py [--cases 40] [--workers 1]
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
pred_dir, ref_dir, out, tol = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
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
    name = rf.name[:-7]
    for c in range(n - 1):
        rows.append([name, c + 1, float(d[0, c]), float(j[0, c]), float(h[0, c]), float(s[0, c])])
with open(out, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["case", "label", "dice", "iou", "hd95_mm", "nsd"])
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


def read_rows(path: Path) -> dict[tuple[str, int], list[float]]:
    with open(path, newline="") as fh:
        return {(r["case"], int(r["label"])): [float(r[m]) for m in ("dice", "iou", "hd95_mm", "nsd")]
                for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tol", type=float, default=2.0)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pred, ref = make_cohort(root, args.cases)
        (root / "monai_eval.py").write_text(MONAI_SCRIPT)
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
