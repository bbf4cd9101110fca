"""Inference backends side by side (medseg.inference.backends): the network's forward, and whole cohorts.

    PYTHONPATH=. python benchmarks/bench_backends.py forward [--repeat 7] [--threads 1,2] [--big 128]
    PYTHONPATH=. python benchmarks/bench_backends.py cohort [--cases DIR] [--repeat 3]
    PYTHONPATH=. python benchmarks/bench_backends.py threads [--loads 0,2] [--repeat 5]

**forward**: the shipped ``hippocampus_unet`` (fold 0) on two window sets, every variant interleaved
in one process (A B C A B C ...), median over ``--repeat`` rounds after one warm-up round:

* ``hippo``: one batch of 4 windows 40 x 56 x 40 cut from the 4 sample cases of
  ``data_samples/hippocampus/images``, each z-scored and zero-padded to the window as the predictor
  does (``--images DIR`` for other cases);
* ``big``: one window ``--big``^3 (default 128) of sample case 1, z-scored and resampled linearly
  to that size (a real MRI's structure on a large window, for instance normalisation over 2 M voxels).

Variants: PyTorch fp32 and OpenVINO fp32 (the default export: InstanceNorm as OpenVINO's MVN) at each
of ``--threads`` (default: 1 and all cores), OpenVINO with the backends module's optional exact
normalisation (``openvino-exactnorm``), and the batch modes of a short last batch (``--tail``: a
batch of 1 window run as a static network, padded to the full batch, or on a dynamic-batch network).
Reported per variant: median ms, ratio to PyTorch fp32 at the most threads (>1: faster), GFLOP/s and
% of ``--peak-gflops`` (the machine's nominal fp32 peak; 294 on the 2-core reference machine), max
abs logit difference and argmax agreement against PyTorch fp32 and (``--f64``, default on) the max
abs logit difference against PyTorch in float64. FLOPs are counted from the module with forward
hooks: 2 * Cin/groups * Cout * prod(kernel) per output voxel of a convolution, per input voxel of a
transposed convolution (normalisation and activations are not counted).

**threads**: whether the thread count medseg chooses (:func:`medseg.device.choose_threads`) holds
under load. For each ``--loads`` level (default 0 and as many busy-looping processes as cores), those
processes are started, then the choice is read and the hippocampus batch timed on PyTorch and OpenVINO
at every fixed count 1..cores, interleaved; prints the medians, the count chosen and its time against
the best fixed count.

**cohort**: ``python -m medseg predict`` over the cases (default ``data_samples/hippocampus/images``)
with ``--backend torch`` and ``--backend openvino`` as separate processes, alternated, ``--repeat``
runs each after one untimed run of each (the OpenVINO one converts and caches the networks), default
settings otherwise (the bundle's TTA, threads chosen by medseg; ``--threads N`` passes a count). Prints
the wall-time medians and their ratio, and compares the label maps voxel by voxel (and, with
``--labels DIR``, each case's mean foreground Dice under both backends).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SAMPLES = REPO / "data_samples" / "hippocampus"


# ------------------------------------------------------------------ inputs and FLOPs
def _zscore(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return ((a - a.mean()) / max(a.std(), 1e-8)).astype(np.float32)


def _pad_to(a: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    src = tuple(slice(max(0, (s - t) // 2), max(0, (s - t) // 2) + min(s, t)) for s, t in zip(a.shape, shape))
    dst = tuple(slice(max(0, (t - s) // 2), max(0, (t - s) // 2) + min(s, t)) for s, t in zip(a.shape, shape))
    out[dst] = a[src]
    return out


def window_sets(images: Path, big: int, window=(40, 56, 40)) -> dict[str, torch.Tensor]:
    from scipy import ndimage

    from medseg.io import read_volume

    files = sorted(images.glob("*.nii*"))[:4]
    if not files:
        raise SystemExit(f"no images in {images}")
    arrs = [_zscore(read_volume(f, kind="image").array) for f in files]
    hippo = np.stack([_pad_to(a, window) for a in arrs])[:, None]
    zoom = [big / s for s in arrs[0].shape]
    large = ndimage.zoom(arrs[0], zoom, order=1)[:big, :big, :big]
    return {"hippo": torch.from_numpy(np.ascontiguousarray(hippo)),
            "big": torch.from_numpy(_zscore(_pad_to(large, (big,) * 3)))[None, None]}


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of the convolutions of one forward pass on ``x`` (see the module doc)."""
    total = [0.0]

    def hook(mod, inp, out):
        k = float(np.prod(mod.kernel_size))
        if isinstance(mod, torch.nn.modules.conv._ConvTransposeNd):
            vox = float(np.prod(inp[0].shape[2:])) * inp[0].shape[0]
        else:
            vox = float(np.prod(out.shape[2:])) * out.shape[0]
        total[0] += 2.0 * mod.in_channels / mod.groups * mod.out_channels * k * vox

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0]


# ------------------------------------------------------------------ forward
def forward(args) -> None:
    from medseg.bundle import load_models
    from medseg.device import available_cpus
    from medseg.inference import backends as be

    model = load_models(REPO / "medseg" / "bundles" / "hippocampus_unet", folds=[0])[0][0]
    sets = window_sets(Path(args.images), args.big)
    threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads else \
        sorted({1, available_cpus()})
    have_ov = be.openvino_status() is None
    if not have_ov:
        print(f"OpenVINO: {be.openvino_status()} (only PyTorch is measured)")
    cache = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    torch.set_num_threads(max(threads))
    for name, x in sets.items():
        if args.only and name not in args.only.split(","):
            continue
        gflop = conv_flops(model, x[:1]) / 1e9
        variants: dict[str, tuple] = {}
        for t in threads:
            variants[f"torch fp32 {t}t"] = (t, model)
        if have_ov:
            for t in threads:
                opts = be.BackendOptions(batch=x.shape[0], channels=1, window=tuple(x.shape[2:]), threads=t,
                                         cache_dirs=(cache,), check=False)
                variants[f"openvino fp32 {t}t"] = (t, be.prepare_model(model, "openvino", opts))
            t = max(threads)
            opts = be.BackendOptions(batch=x.shape[0], channels=1, window=tuple(x.shape[2:]), threads=t,
                                     cache_dirs=(cache,), check=False, exact_norm=True)
            variants[f"openvino-exactnorm fp32 {t}t"] = (t, be.prepare_model(model, "openvino", opts))
            if args.tail and x.shape[0] > 1:
                for mode in be.BATCH_MODES:
                    opts = be.BackendOptions(batch=x.shape[0], channels=1, window=tuple(x.shape[2:]), threads=t,
                                             cache_dirs=(cache,), check=False, batch_mode=mode)
                    variants[f"tail 1 window: openvino {mode} {t}t"] = (t, be.prepare_model(model, "openvino", opts))
        ref_name = f"torch fp32 {max(threads)}t"
        times: dict[str, list[float]] = {k: [] for k in variants}
        outs: dict[str, torch.Tensor] = {}
        for rnd in range(args.repeat + 1):
            for k, (t, run) in variants.items():
                inp = x[:1] if k.startswith("tail") else x
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                with torch.no_grad():
                    y = run(inp)
                dt = time.perf_counter() - t0
                if rnd or not args.repeat:          # --repeat 0: accuracy only, the one round's times
                    times[k].append(dt)
                if not rnd:
                    outs[k] = y
        torch.set_num_threads(max(threads))
        ref = outs[ref_name]
        f64 = None
        if args.f64:
            import copy

            with torch.no_grad():
                f64 = copy.deepcopy(model).double()(x.double())
        n_win = x.shape[0]
        print(f"\n## {name}: {n_win} x {tuple(x.shape[2:])} windows, {gflop:.2f} GFLOP per window (convolutions), "
              f"median of {args.repeat}, peak {args.peak_gflops:g} GFLOP/s")
        print("| variant | ms | ratio vs " + ref_name + " | GFLOP/s | % of peak | max abs logit diff vs torch fp32 "
              "| argmax agreement | max abs diff vs float64 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        ref_ms = statistics.median(times[ref_name]) * 1e3
        for k in variants:
            ms = statistics.median(times[k]) * 1e3
            wins = 1 if k.startswith("tail") else n_win
            rate = gflop * wins / (ms / 1e3)
            y = outs[k]
            r = ref[:1] if k.startswith("tail") else ref
            diff = float((y - r).abs().max())
            agree = float((y.argmax(1) == r.argmax(1)).float().mean()) * 100
            d64 = "" if f64 is None else f"{float((y.double() - f64[:y.shape[0]]).abs().max()):.2g}"
            ratio = "" if k.startswith("tail") else f"{ref_ms / ms:.2f}"
            print(f"| {k} | {ms:.0f} | {ratio} | {rate:.0f} | {100 * rate / args.peak_gflops:.0f} % | {diff:.2g} "
                  f"| {agree:.4f} % | {d64} |")


# ------------------------------------------------------------------ cohort
def _predict(cases: Path, out: Path, backend: str, threads: int | None) -> float:
    from bench_predict_breakdown import run_predict

    return run_predict(cases, out, threads, ("--backend", backend), timeout=7200)[0]


def cohort(args) -> None:
    import shutil

    from medseg.io import read_volume

    cases = Path(args.cases)
    tmp = Path(tempfile.mkdtemp(prefix="bench_backends_cohort_"))
    walls: dict[str, list[float]] = {"torch": [], "openvino": []}
    try:
        for rnd in range(args.repeat + 1):
            for b in walls:
                out = tmp / f"{b}_{rnd}"
                w = _predict(cases, out, b, args.threads)
                if rnd:
                    walls[b].append(w)
                    if rnd < args.repeat:
                        shutil.rmtree(out)
        a, b = tmp / f"torch_{args.repeat}", tmp / f"openvino_{args.repeat}"
        files = sorted(p.name for p in a.glob("*.nii.gz"))
        total = differ = 0
        dice_gap = []
        for f in files:
            la, lb = read_volume(a / f).array, read_volume(b / f).array
            total += la.size
            differ += int((la != lb).sum())
            if args.labels:
                ref = read_volume(Path(args.labels) / f).array
                d = [_mean_dice(lab, ref) for lab in (la, lb)]
                dice_gap.append(abs(d[0] - d[1]))
        mt, mo = statistics.median(walls["torch"]), statistics.median(walls["openvino"])
        print(f"{len(files)} cases from {cases}; medseg predict wall, median of {args.repeat} (alternated):")
        print("| backend | wall s | ratio vs torch |")
        print("| --- | --- | --- |")
        print(f"| torch | {mt:.2f} | 1.00 |")
        print(f"| openvino | {mo:.2f} | {mt / mo:.2f} |")
        print(f"labels: {differ} of {total} voxels differ ({100 * (1 - differ / max(total, 1)):.4f} % equal)")
        if dice_gap:
            print(f"per-case mean foreground Dice: largest difference between backends {max(dice_gap):.5f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    ds = []
    for k in np.unique(ref[ref > 0]):
        p, r = pred == k, ref == k
        ds.append(2.0 * (p & r).sum() / max(p.sum() + r.sum(), 1))
    return float(np.mean(ds)) if ds else 1.0


def threads_mode(args) -> None:
    from medseg.bundle import load_models
    from medseg.device import available_cpus, busy_cpus, choose_threads
    from medseg.inference import backends as be

    model = load_models(REPO / "medseg" / "bundles" / "hippocampus_unet", folds=[0])[0][0]
    x = window_sets(Path(args.images), 8)["hippo"]
    n = available_cpus()
    counts = list(range(1, n + 1))
    loads = [int(v) for v in args.loads.split(",")] if args.loads else [0, n]
    cache = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    runners: dict[str, tuple[int, object]] = {f"torch {t}t": (t, model) for t in counts}
    if be.openvino_status() is None:
        for t in counts:
            opts = be.BackendOptions(batch=x.shape[0], channels=1, window=tuple(x.shape[2:]), threads=t,
                                     cache_dirs=(cache,), check=False)
            runners[f"openvino {t}t"] = (t, be.prepare_model(model, "openvino", opts))
    print(f"{n} cores available; hippocampus batch of 4 windows; median of {args.repeat}")
    print("| busy processes | chosen threads | " + " | ".join(f"{k} ms" for k in runners)
          + " | chosen vs best, torch | chosen vs best, openvino |")
    print("| --- | --- | " + " | ".join("---" for _ in runners) + " | --- | --- |")
    for load in loads:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            time.sleep(1.0)
            # what medseg predict chooses without --threads and OMP_NUM_THREADS
            chosen = choose_threads(cpus=n, busy=busy_cpus())
            times: dict[str, list[float]] = {k: [] for k in runners}
            for rnd in range(args.repeat + 1):
                for k, (t, run) in runners.items():
                    torch.set_num_threads(t)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        run(x)
                    if rnd:
                        times[k].append(time.perf_counter() - t0)
        finally:
            for p in busy:
                p.kill()
                p.wait()
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rel = []
        for b in ("torch", "openvino"):
            mine = [v for k, v in med.items() if k.startswith(b + " ")]
            rel.append(f"{med[f'{b} {chosen}t'] / min(mine):.2f}" if mine else "")
        print(f"| {load} | {chosen} | " + " | ".join(f"{med[k]:.0f}" for k in runners) + f" | {rel[0]} | {rel[1]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--repeat", type=int, default=7)
    f.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    f.add_argument("--big", type=int, default=128, help="edge of the large window (default 128)")
    f.add_argument("--only", default=None, help="hippo, big or both (default both)")
    f.add_argument("--images", default=str(SAMPLES / "images"))
    f.add_argument("--peak-gflops", type=float, default=294.0)
    f.add_argument("--no-f64", dest="f64", action="store_false")
    f.add_argument("--no-tail", dest="tail", action="store_false")
    c = sub.add_parser("cohort")
    c.add_argument("--cases", default=str(SAMPLES / "images"))
    c.add_argument("--labels", default=None, help="reference label maps with the same file names (Dice per case)")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("threads")
    t.add_argument("--loads", default=None, help="busy processes per measurement, e.g. 0,2 (default: 0 and cores)")
    t.add_argument("--repeat", type=int, default=5)
    t.add_argument("--images", default=str(SAMPLES / "images"))
    args = ap.parse_args()
    {"forward": forward, "cohort": cohort, "threads": threads_mode}[args.mode](args)


if __name__ == "__main__":
    main()
