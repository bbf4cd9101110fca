"""Resampling benchmark: medseg vs SimpleITK Resample vs MONAI Spacing vs scipy.ndimage.zoom.

Real CT (TotalSegmentator ``example_ct.nii.gz``, 112 x 101 x 122 voxels at 3 mm) to 1.5 mm, all
methods in one run on the same float32 array (converted once, outside the timing).

Common output grid (physical space): the field-of-view-preserving 1.5 mm grid of
``medseg.preprocess.spacing_grid`` -- 224 x 202 x 244 voxels, first voxel centre 0.75 mm outside
the input's first centre on every axis (voxel faces of input and output coincide). Each peer is
set up to produce exactly this grid and the script checks it:

* SimpleITK ``Resample`` onto a reference image with that size/spacing/origin (index frame of the
  array: spacing 3 mm, origin 0, identity direction -- a rigid transform of the RAS frame, so
  values at physical points are unchanged);
* MONAI ``Spacing(pixdim=1.5, scale_extent=True)`` (its output affine is compared with the grid);
* ``scipy.ndimage.zoom(zoom=2, grid_mode=True)``, which maps voxel faces to voxel faces.

Equal output is measured against a peer with the same kernel (linear vs SimpleITK linear; cubic
B-spline vs SimpleITK B-spline and scipy order 3) as max and mean absolute difference in HU,
over the whole grid, over the interior (2 output voxels cropped: the peers clamp, pad or mirror
differently within half an input voxel of the border) and 16 voxels in (a B-spline prefilter
with another boundary mode, as MONAI's, changes values several voxels deep).

Run: ``PYTHONPATH=. python benchmarks/bench_resample.py [--repeats 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CT = REPO.parent / "shared" / "data" / "totalsegmentator" / "example_ct.nii.gz"
BORDER = 2
DEEP_BORDER = 16  # B-spline prefilter boundary effects decay by 0.27 per input voxel


def timed(fn: Callable[[], np.ndarray], repeats: int, slow_repeats: int) -> tuple[float, float, np.ndarray]:
    """Median and minimum wall time after one untimed warm-up call (imports, thread pools, first
    touch of memory); methods slower than 1 s get ``slow_repeats`` timed calls instead of ``repeats``."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, slow_repeats if first > 1.0 else repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), np.asarray(out, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=Path, default=CT)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=3, help="repeats for methods slower than 1 s")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import scipy.ndimage as ndi
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from medseg.io import read_volume
    from medseg.preprocess import grid_of, resample_to_spacing, spacing_grid
    from medseg.volume import Volume

    ncpu = len(os.sched_getaffinity(0))
    torch.set_num_threads(ncpu)
    vol = read_volume(args.ct)
    a = vol.array.astype(np.float32)
    s_in = np.asarray(vol.spacing_mm)
    target = (args.spacing,) * 3
    # the same geometry in the array's index frame (rigid transform of RAS): origin 0, identity axes
    vidx = Volume(a, spacing_mm=vol.spacing_mm, origin_mm=(0, 0, 0), direction=np.eye(3))
    g = spacing_grid(grid_of(vidx), target)
    zoom = np.asarray(g.shape) / np.asarray(a.shape)

    img = sitk.GetImageFromArray(a)
    img.SetSpacing(tuple(float(s) for s in s_in[::-1]))
    ref = sitk.Image([int(n) for n in g.shape[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(tuple(g.spacing_mm[::-1]))
    ref.SetOrigin(tuple(g.origin_mm[::-1]))

    def sitk_run(kind: int) -> Callable[[], np.ndarray]:
        return lambda: sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), kind, 0.0,
                                                                sitk.sitkFloat32))

    aff = torch.eye(4, dtype=torch.float64)
    aff[:3, :3] = torch.diag(torch.tensor(s_in))
    mt = MetaTensor(torch.from_numpy(a)[None], affine=aff)

    # MONAI gets the grid's exact spacing (differs from the target when n * s / t is not an integer)
    def monai_run(mode) -> Callable[[], np.ndarray]:
        sp = Spacing(pixdim=g.spacing_mm, mode=mode, scale_extent=True)
        return lambda: sp(mt)[0].numpy()

    monai_affine = Spacing(pixdim=g.spacing_mm, mode="bilinear", scale_extent=True)(mt).affine.numpy()
    monai_same = bool(np.allclose(monai_affine, g.affine, atol=1e-4))

    methods = {
        "SimpleITK linear": ("linear", sitk_run(sitk.sitkLinear)),
        "MONAI Spacing bilinear": ("linear", monai_run("bilinear")),
        "scipy zoom order 1": ("linear", lambda: ndi.zoom(a, zoom, order=1, grid_mode=True, mode="nearest")),
        "medseg linear": ("linear", lambda: resample_to_spacing(vidx, target, order="linear").array),
        "SimpleITK B-spline": ("cubic", sitk_run(sitk.sitkBSpline)),
        "MONAI Spacing order 3 (scipy)": ("cubic", monai_run(3)),
        "scipy zoom order 3": ("cubic", lambda: ndi.zoom(a, zoom, order=3, grid_mode=True, mode="mirror")),
        "medseg cubic (B-spline)": ("cubic", lambda: resample_to_spacing(vidx, target, order="cubic").array),
    }
    results: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, (kernel, fn) in methods.items():
        t, tmin, out = timed(fn, args.repeats, args.slow_repeats)
        if out.shape != tuple(g.shape):
            raise SystemExit(f"{name}: output shape {out.shape} is not the common grid {g.shape}")
        outputs[name] = out
        results[name] = {"kernel": kernel, "time_s": t, "min_time_s": tmin}
        print(f"{name:32s} {t:7.3f} s (min {tmin:.3f})", flush=True)

    inner = (slice(BORDER, -BORDER),) * 3
    deep = (slice(DEEP_BORDER, -DEEP_BORDER),) * 3
    refs = {"linear": ["SimpleITK linear"], "cubic": ["SimpleITK B-spline", "scipy zoom order 3"]}
    for name, r in results.items():
        peers = [p for p, q in results.items() if q["kernel"] == r["kernel"] and not p.startswith("medseg")]
        r["ratio_vs_fastest_peer"] = r["time_s"] / min(results[p]["time_s"] for p in peers)
        r["diff"] = {}
        for ref_name in refs[r["kernel"]]:
            if ref_name == name:
                continue
            d = np.abs(outputs[name].astype(np.float64) - outputs[ref_name])
            r["diff"][ref_name] = {"max_all": float(d.max()), "mean_all": float(d.mean()),
                                   "max_interior": float(d[inner].max()), "mean_interior": float(d[inner].mean()),
                                   "max_deep_interior": float(d[deep].max())}

    print(f"\nCT {args.ct.name}: {a.shape} at {tuple(s_in.tolist())} mm -> {g.shape} at {g.spacing_mm} mm; "
          f"{ncpu} CPUs ({platform.processor() or platform.machine()}); MONAI grid == common grid: {monai_same}")
    print("| method | kernel | median time (s) | min time (s) | ratio vs fastest peer "
          "| vs same-kernel peer: max / mean abs diff, "
          "interior (HU) | max, 16-voxel border (HU) | whole grid max (HU) |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for name, r in results.items():
        diffs = "; ".join(f"{k}: {v['max_interior']:.3g} / {v['mean_interior']:.2g}" for k, v in r["diff"].items())
        whole = "; ".join(f"{v['max_all']:.3g}" for v in r["diff"].values())
        deep_s = "; ".join(f"{v['max_deep_interior']:.3g}" for v in r["diff"].values())
        print(f"| {name} | {r['kernel']} | {r['time_s']:.3f} | {r['min_time_s']:.3f} "
              f"| {r['ratio_vs_fastest_peer']:.2f} | {diffs or '-'} "
              f"| {deep_s or '-'} | {whole or '-'} |")
    if args.json:
        args.json.write_text(json.dumps({"grid": g.to_dict(), "monai_same_grid": monai_same, "cpus": ncpu,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
