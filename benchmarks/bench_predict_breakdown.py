"""Where the time of a whole ``medseg predict`` goes, against the sum of its parts.

    PYTHONPATH=. python benchmarks/bench_predict_breakdown.py [--cases 208] [--input DIR] [--keep DIR]

1. **pipelined**: ``python -m medseg predict --model hippocampus_unet --input COHORT --output TMP
   --device cpu --no-progress`` as a separate process, exactly as a user runs it. Its wall time
   (process start to exit) and the per-case, per-phase timers it writes to ``TMP/timings.csv``
   (read, preprocess, forward, invert, post-process, write, record; see
   :mod:`medseg.inference.timings`).
2. **serial**: the very same functions on the same cases one after another in one thread, no
   prefetch or writer thread (read -> predict -> write -> checksum + manifest rewrite), in this
   process after loading the model; the sum of parts without any overlap.

The overlap gained by the reader/writer threads is measured twice: within the pipelined run (its
sum of parts minus its wall time: both under the same load) and as ``serial loop - pipelined
run`` (two runs one after the other: on a shared machine load changes between them show up
there too). The start-up (imports, model load) is process wall minus the run's wall. Cohort:
``../shared/data/hippocampus/imagesTr`` (208 MRI cases, about
35 x 50 x 35 voxels at 1 mm), the first ``--cases`` of them in sorted order.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COHORT = REPO.parent / "shared" / "data" / "hippocampus" / "imagesTr"


def _subset(src: Path, n: int | None, tmp: Path) -> Path:
    files = sorted(p for p in src.iterdir() if p.name.endswith(".nii.gz") and not p.name.startswith("."))
    if n is None or n >= len(files):
        return src
    sub = tmp / "input"
    sub.mkdir()
    for p in files[:n]:
        (sub / p.name).symlink_to(p.resolve())
    return sub


def run_predict(src: Path, out: Path, threads: int | None, extra: tuple[str, ...] = (),
                timeout: float = 3600) -> tuple[float, str]:
    """``medseg predict`` of this checkout (hippocampus_unet, CPU) as a process: (wall seconds, stdout);
    exits with its output when it fails."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "medseg", "predict", "--model", "hippocampus_unet", "--input", str(src),
           "--output", str(out), "--device", "cpu", "--no-progress", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def pipelined(src: Path, out: Path, threads: int | None) -> dict:
    wall, stdout = run_predict(src, out, threads)
    m = re.search(r"timings: (\d+) case\(s\) in ([0-9.]+) s wall", stdout)
    from medseg.inference.timings import RunTimings, read_timings

    rows = read_timings(out / "timings.csv")
    run_wall = float(m.group(2)) if m else max(r["done_at_s"] for r in rows)
    last = max(r["compute_at_s"] + r["compute_s"] for r in rows)
    t = RunTimings(rows, wall_s=run_wall, drain_s=max(run_wall - last, 0.0))
    return {"process_wall": wall, "timings": t, "stdout": stdout}


def serial(src: Path, out: Path, threads: int | None) -> dict:
    import torch

    from medseg.fsutil import atomic_write_text
    from medseg.inference.cohort import find_cases, load_channels
    from medseg.inference.predictor import Predictor
    from medseg.io import write_volume
    from medseg.manifest import sha256_file

    if threads:
        torch.set_num_threads(threads)
    predictor = Predictor.from_bundle("hippocampus_unet", device="cpu", threads=threads)
    cases = find_cases(src, channels=predictor.channels)
    load_channels(cases[0][1])   # first-call imports (nibabel etc.) out of the loop
    sums = dict.fromkeys(("read", "preprocess", "forward", "invert", "postprocess", "write", "record"), 0.0)
    manifest: dict = {"cases": {}}
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for cid, paths in cases:
        t0 = time.perf_counter()
        vols = load_channels(paths)
        t1 = time.perf_counter()
        pred = predictor.predict_volume(vols)
        t2 = time.perf_counter()
        path = write_volume(pred.label, out / f"{cid}.nii.gz")
        t3 = time.perf_counter()
        manifest["cases"][cid] = {"outputs": {path.name: sha256_file(path)}, "status": "done"}
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        t4 = time.perf_counter()
        sums["read"] += t1 - t0
        for k, v in pred.timings.items():
            sums[k] += v
        sums["write"] += t3 - t2
        sums["record"] += t4 - t3
    return {"wall": time.perf_counter() - t_all, "sums": sums, "n": len(cases)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, default=COHORT)
    ap.add_argument("--cases", type=int, default=None, help="first N cases (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the pipelined output here")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="medseg-bench-predict-") as tmpdir:
        tmp = Path(tmpdir)
        src = _subset(args.input, args.cases, tmp)
        out = args.keep or tmp / "pipelined"
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} is not empty (the run would resume instead of predicting)")
        load0 = os.getloadavg()[0]
        p = pipelined(src, out, args.threads)
        s = serial(src, tmp / "serial", args.threads)
        load1 = os.getloadavg()[0]

    t = p["timings"]
    n = len(t.rows)
    print(f"cohort {args.input} ({n} cases); torch {torch.__version__}, {args.threads or torch.get_num_threads()} "
          f"threads; load average {load0:.1f} before, {load1:.1f} after")
    print(t.summary())
    print(f"\n{'phase':12s} {'pipelined s':>12s} {'serial s':>10s} {'serial %':>9s} {'ms/case (serial)':>17s}")
    total_p = total_s = 0.0
    for ph, sv in s["sums"].items():
        pv = t.total(f"{ph}_s")
        total_p += pv
        total_s += sv
        print(f"{ph:12s} {pv:12.2f} {sv:10.2f} {100 * sv / s['wall']:8.1f} % {1000 * sv / s['n']:16.1f}")
    print(f"{'sum of parts':12s} {total_p:12.2f} {total_s:10.2f}")
    startup = p["process_wall"] - t.wall_s
    print(f"\nwhole `medseg predict` process   {p['process_wall']:8.2f} s  (start-up: imports + model load "
          f"{startup:.2f} s, run {t.wall_s:.2f} s)")
    print(f"pipelined run (threads)          {t.wall_s:8.2f} s  model thread busy {t.total('compute_s'):.2f} s "
          f"({100 * t.total('compute_s') / t.wall_s:.0f} %), waited {t.total('wait_s'):.2f} s, drain {t.drain_s:.2f} s")
    print(f"serial loop (one thread)         {s['wall']:8.2f} s")
    io_s = sum(t.total(f"{k}_s") for k in ("read", "write", "record"))
    print(f"overlap within the run           {total_p - t.wall_s:8.2f} s  (its sum of parts minus its wall; same load "
          f"for both); I/O hidden behind the model {t.io_hidden_s:.2f} s of {io_s:.2f} s")
    gain = s['wall'] - t.wall_s
    print(f"serial loop - pipelined run      {gain:8.2f} s  ({100 * gain / s['wall']:.1f} % "
          f"of the serial loop; two runs one after the other, so load changes between them show here)")


if __name__ == "__main__":
    main()
