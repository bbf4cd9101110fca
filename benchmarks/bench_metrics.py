"""HD95 + NSD of all labels: medseg vs MONAI vs DeepMind surface-distance, same masks, one run.

Data: the TotalSegmentator pair (example_seg_fast vs example_seg, ~41 labels) and a hippocampus
cohort (labels vs perturbed labels: dilation, erosion, shifts; 2 labels per case).

* medseg (default, surfel-based) is compared with surface-distance: same definition, numbers
  must agree (max abs difference printed).
* medseg ``mode="monai"`` is compared with monai.metrics.compute_hausdorff_distance +
  compute_surface_dice (one-hot, include_background=False): same definition, same numbers.
Each timing is the median of ``--repeat`` runs (everything after the volumes are in memory).

Usage: PYTHONPATH=. python benchmarks/bench_metrics.py [--cases 20] [--repeat 3] [--tol 2.0]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

np.Inf = np.inf  # noqa: NPY201 -- surface-distance 0.1 still uses np.Inf (removed in NumPy 2)
import surface_distance as sdp  # noqa: E402
import torch  # noqa: E402
from monai.metrics import compute_hausdorff_distance, compute_surface_dice  # noqa: E402

from medseg.io import read_volume  # noqa: E402
from medseg.metrics.evaluate import evaluate_arrays  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def perturb(lab: np.ndarray, i: int) -> np.ndarray:
    """A realistic imperfect prediction: label-wise dilation / erosion / shift, by case index."""
    out = np.zeros_like(lab)
    for k in (1, 2):
        m = lab == k
        kind = i % 4
        if kind == 0:
            m = ndimage.binary_dilation(m)
        elif kind == 1:
            m = ndimage.binary_erosion(m)
        elif kind == 2:
            m = np.roll(m, (1, -1, 0), axis=(0, 1, 2))
        else:
            m = ndimage.binary_opening(np.roll(m, 2, axis=2), iterations=1)
        out[m & (out == 0)] = k
    return out


def load_pairs(n_cases: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, tuple]]]:
    ts = DATA / "totalsegmentator"
    r = read_volume(ts / "example_seg.nii.gz", is_label=True)
    p = read_volume(ts / "example_seg_fast.nii.gz", is_label=True)
    hip = sorted((DATA / "hippocampus" / "labelsTr").glob("*.nii.gz"))[:n_cases]
    cohort = []
    for i, f in enumerate(hip):
        v = read_volume(f, is_label=True)
        cohort.append((perturb(v.array, i), v.array, v.spacing_mm))
    return {"totalsegmentator": [(p.array, r.array, r.spacing_mm)], "hippocampus": cohort}


def labels_of(pred, ref) -> list[int]:
    return sorted(({int(v) for v in np.unique(ref)} | {int(v) for v in np.unique(pred)}) - {0})


def run_medseg(pairs, tol, mode):
    out = []
    for pred, ref, sp in pairs:
        rows = evaluate_arrays(pred, ref, spacing_mm=sp, labels=labels_of(pred, ref), tolerance_mm=tol, mode=mode)
        out.append({r.label: (r.hd95_mm, r.nsd) for r in rows if r.status == "ok"})
    return out


def run_surface_distance(pairs, tol):
    out = []
    for pred, ref, sp in pairs:
        res = {}
        for k in labels_of(pred, ref):
            a, b = ref == k, pred == k
            if not a.any() or not b.any():
                continue
            sd = sdp.compute_surface_distances(a, b, sp)
            res[k] = (sdp.compute_robust_hausdorff(sd, 95), sdp.compute_surface_dice_at_tolerance(sd, tol))
        out.append(res)
    return out


def run_monai(pairs, tol):
    out = []
    for pred, ref, sp in pairs:
        labels = labels_of(pred, ref)
        n = max(labels) + 1
        yp = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), n).permute(3, 0, 1, 2)[None]
        y = torch.nn.functional.one_hot(torch.from_numpy(ref.astype(np.int64)), n).permute(3, 0, 1, 2)[None]
        idx = torch.tensor([0] + labels)
        yp, y = yp[:, idx].float(), y[:, idx].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(yp, y, include_background=False, percentile=95, spacing=list(sp))
            ns = compute_surface_dice(yp, y, class_thresholds=[tol] * len(labels), include_background=False,
                                      spacing=list(sp))
        res = {}
        for j, k in enumerate(labels):
            if (ref == k).any() and (pred == k).any():
                res[k] = (float(hd[0, j]), float(ns[0, j]))
        out.append(res)
    return out


def timed(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def max_diff(a, b) -> float:
    worst = 0.0
    for ra, rb in zip(a, b):
        if set(ra) != set(rb):
            return float("inf")
        for k in ra:
            worst = max(worst, abs(ra[k][0] - rb[k][0]), abs(ra[k][1] - rb[k][1]))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20, help="hippocampus cases")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tol", type=float, default=2.0, help="NSD tolerance (mm)")
    args = ap.parse_args()
    data = load_pairs(args.cases)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, "
          f"torch threads {torch.get_num_threads()}; NSD tolerance {args.tol} mm; median of {args.repeat}")
    print("| data | labels scored | peer | peer s | medseg s | ratio (peer/medseg) | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, pairs in data.items():
        t_ms, r_ms = timed(lambda: run_medseg(pairs, args.tol, "surface-distance"), args.repeat)
        t_sd, r_sd = timed(lambda: run_surface_distance(pairs, args.tol), args.repeat)
        t_mm, r_mm = timed(lambda: run_medseg(pairs, args.tol, "monai"), args.repeat)
        t_mo, r_mo = timed(lambda: run_monai(pairs, args.tol), args.repeat)
        n = sum(len(r) for r in r_ms)
        print(f"| {name} | {n} | surface-distance 0.1 | {t_sd:.3f} | {t_ms:.3f} | {t_sd / t_ms:.1f}x | "
              f"{max_diff(r_ms, r_sd):.1e} |")
        print(f"| {name} | {n} | MONAI {__import__('monai').__version__} (vs medseg mode=monai) | {t_mo:.3f} | "
              f"{t_mm:.3f} | {t_mo / t_mm:.1f}x | {max_diff(r_mm, r_mo):.1e} |")
        print(f"| {name} | {n} | MONAI (vs medseg default surfel mode) | {t_mo:.3f} | {t_ms:.3f} | "
              f"{t_mo / t_ms:.1f}x | (different definitions) |")


if __name__ == "__main__":
    main()
