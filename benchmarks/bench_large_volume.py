"""Peak memory and time of ``medseg predict`` and ``medseg evaluate`` on a CT-sized volume, this checkout vs another.

    git archive main | (mkdir -p /tmp/medseg_main && tar -x -C /tmp/medseg_main)   # the code to compare with
    PYTHONPATH=. python benchmarks/bench_large_volume.py --baseline /tmp/medseg_main \
        [--case out/large_ct] [--make 300,512,512] [--configs fold0-notta,fold0,default] [--rounds 1]

The case (``--case``, made by ``benchmarks/make_large_ct.py`` when ``--make SHAPE`` is given or
the folder is missing) is TotalSegmentator's example CT resampled to 512 x 512 x 300 voxels (300 MiB
as float32) plus a CT-sized pair of multi-label masks for ``medseg evaluate``.

Every run is its own process started exactly as a user would (``python -m medseg predict --model
hippocampus_unet --input CASE/image --output TMP --device cpu --no-progress --force``; the shipped
model is an MRI model, so its input guard refuses a CT without ``--force``), once with this
checkout's code and once with ``--baseline``'s (``PYTHONPATH`` picks which), interleaved
(A B, B A, A B ...) so that load changes hit both alike. Reported per run: wall time, the
child's peak resident memory (``ru_maxrss`` from ``os.wait4``: the high-water mark of that process
alone, whatever the machine is doing; Linux starts it at this script's own peak, tens of MiB,
since the mark survives vfork + exec), the same as a multiple of one float32 copy of the volume,
user / system CPU seconds and minor page faults. The label maps of the two codes are compared voxel
for voxel. Peak memory does not depend on CPU contention; the times do (the 1-minute load average
is printed with every row).

Configurations (``--configs``): ``fold0-notta`` (``--folds 0 --no-tta``: one network pass per
window), ``fold0`` (``--folds 0``: the bundle's test-time mirroring, 8 passes), ``default`` (all 5
folds and mirroring: 40 passes per window, hours on 2 CPU cores at full size), ``fold0-probs``
(``--folds 0 --no-tta --save-probabilities``), and ``evaluate`` (``medseg evaluate --pred CASE/pred
--ref CASE/ref``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS: dict[str, list[str]] = {
    "fold0-notta": ["--folds", "0", "--no-tta"],
    "fold0": ["--folds", "0"],
    "default": [],
    "fold0-probs": ["--folds", "0", "--no-tta", "--save-probabilities"],
}


def run_measured(cmd: list[str], code: Path, timeout: float, log: Path) -> dict:
    """Run ``cmd`` with ``code`` first on PYTHONPATH; wall time and the child's own rusage (``os.wait4``)."""
    env = dict(os.environ, PYTHONPATH=str(code))
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(code), stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise SystemExit(f"timed out after {timeout} s: {' '.join(cmd)} (log {log})")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "minflt": ru.ru_minflt, "load": os.getloadavg()[0]}


def predict_cmd(case: Path, out: Path, extra: list[str], threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "medseg", "predict", "--model", "hippocampus_unet", "--input", str(case / "image"),
           "--output", str(out), "--device", "cpu", "--no-progress", "--force", *extra]
    return cmd + (["--threads", str(threads)] if threads else [])


def evaluate_cmd(case: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medseg", "evaluate", "--pred", str(case / "pred"), "--ref", str(case / "ref"),
            "--output", str(out), "--no-progress"]


def differing_voxels(a: Path, b: Path) -> tuple[int, int]:
    from medseg.io import read_volume

    x, y = read_volume(a, is_label=True).array, read_volume(b, is_label=True).array
    if x.shape != y.shape:
        raise SystemExit(f"{a} and {b} differ in shape: {x.shape} vs {y.shape}")
    return int(np.count_nonzero(x != y)), int(x.size)


def probability_difference(a: Path, b: Path) -> float:
    with np.load(a) as pa, np.load(b) as pb:
        return float(np.max(np.abs(pa["probabilities"].astype(np.float32) - pb["probabilities"].astype(np.float32))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with (e.g. main)")
    ap.add_argument("--case", type=Path, default=REPO / "out" / "large_ct", help="folder of make_large_ct.py")
    ap.add_argument("--make", default=None, metavar="Z,Y,X", help="(re)make the case at this shape first")
    ap.add_argument("--fov", type=float, default=1.0, help="with --make: centre fraction of the CT's field of view")
    ap.add_argument("--configs", default="fold0-notta,evaluate", help="comma-separated, of: "
                    + ", ".join([*CONFIGS, "evaluate"]) + " (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="A/B pairs per configuration (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="medseg predict --threads for both")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the outputs here (else a temporary folder)")
    args = ap.parse_args(argv)
    args.case = args.case.resolve()   # the runs start in the code's own folder
    if args.keep is not None:
        args.keep = args.keep.resolve()

    import benchmarks.make_large_ct as mk

    if args.make or not (args.case / "image" / "ct.nii.gz").exists():
        mk.make(args.case, mk.parse_shape(args.make or "300,512,512"), args.fov)
    from medseg.io import read_volume

    shape = read_volume(args.case / "image" / "ct.nii.gz").shape
    vol_mib = float(np.prod(shape)) * 4 / 2**20
    codes = {"main": args.baseline.resolve(), "this": REPO}
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS and c != "evaluate":
            ap.error(f"unknown configuration {c!r}")
    tmp_ctx = tempfile.TemporaryDirectory(prefix="medseg-bench-large-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    root.mkdir(parents=True, exist_ok=True)
    print(f"case {args.case}: {shape[::-1]} voxels (x, y, z), one float32 copy = {vol_mib:.0f} MiB; "
          f"cpu count {os.cpu_count()}, baseline {codes['main']}")
    print("| configuration | code | wall s | peak RSS MiB | x float32 volume | user s | sys s | minor faults | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for c in configs:
            for r in range(args.rounds):
                order = ["main", "this"] if r % 2 == 0 else ["this", "main"]
                for name in order:
                    out = root / f"{c}-{name}-{r}"
                    if out.exists():
                        shutil.rmtree(out)
                    cmd = evaluate_cmd(args.case, out) if c == "evaluate" else \
                        predict_cmd(args.case, out, CONFIGS[c], args.threads)
                    res = run_measured(cmd, codes[name], args.timeout, root / f"{c}-{name}-{r}.log")
                    results.setdefault((c, name), []).append(res)
                    print(f"| {c} | {name} | {res['wall_s']:.1f} | {res['peak_rss_mib']:.0f} | "
                          f"{res['peak_rss_mib'] / vol_mib:.2f} | {res['user_s']:.1f} | {res['sys_s']:.1f} | "
                          f"{res['minflt'] / 1e6:.2f} M | {res['load']:.1f} |", flush=True)
            if c != "evaluate":
                a, b = root / f"{c}-main-0" / "ct.nii.gz", root / f"{c}-this-0" / "ct.nii.gz"
                n, total = differing_voxels(a, b)
                print(f"  {c}: labels differ on {n} of {total} voxels between main and this checkout")
                pa, pb = a.parent / "ct_probabilities.npz", b.parent / "ct_probabilities.npz"
                if pa.exists() and pb.exists():
                    print(f"  {c}: max |probability difference| {probability_difference(pa, pb):.3g}")
        print("\nmedians (this / main):")
        for c in configs:
            m = {n: results[(c, n)] for n in codes}
            w = {n: float(np.median([x["wall_s"] for x in m[n]])) for n in codes}
            p = {n: float(np.median([x["peak_rss_mib"] for x in m[n]])) for n in codes}
            print(f"  {c}: wall {w['main']:.1f} -> {w['this']:.1f} s ({w['this'] / w['main']:.2f}x); peak RSS "
                  f"{p['main']:.0f} -> {p['this']:.0f} MiB ({p['main'] / vol_mib:.2f}x -> {p['this'] / vol_mib:.2f}x "
                  f"the float32 volume)")
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
