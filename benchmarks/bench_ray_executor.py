"""Throughput of ``medseg predict`` on the local executor and on a one-machine Ray cluster, side by side.

    PYTHONPATH=. python benchmarks/ray_executor.py --cases 16 [--cpus 2]

Predicts the first N hippocampus images of ../shared/data with the shipped ``hippocampus_unet``
bundle (CPU), once with ``--executor local`` and once with ``--executor ray`` (a private cluster of
``--cpus`` CPUs, start-up included and also reported separately), checks the outputs are
byte-identical and prints seconds per case and cases per hour.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "hippocampus" / "imagesTr"


def _run(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medseg", "predict", *args], check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medseg_raybench_"))
    src = tmp / "in"
    src.mkdir()
    for p in sorted(SHARED.glob("hippocampus_*.nii.gz"))[: a.cases]:
        shutil.copy(p, src / p.name)
    common = ["--model", "hippocampus_unet", "--input", str(src), "--device", "cpu", "--no-progress"]
    t_local = _run(common + ["--output", str(tmp / "local")])
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_start = time.perf_counter() - t0
    addr = ray.get_runtime_context().gcs_address
    t_ray = _run(common + ["--output", str(tmp / "ray"), "--executor", "ray", "--ray-address", addr])
    ray.shutdown()
    same = all(filecmp.cmp(tmp / "local" / f.name, f, shallow=False)
               for f in (tmp / "ray").iterdir() if not f.name.startswith("."))
    n = a.cases
    print(f"cases={n} cpus={a.cpus} byte_identical={same}")
    print(f"local: {t_local:.1f} s total, {t_local / n:.2f} s/case, {3600 * n / t_local:.0f} cases/h (incl. start-up)")
    print(f"ray:   {t_ray:.1f} s total (cluster already up; start-up {t_start:.1f} s), {t_ray / n:.2f} s/case, "
          f"{3600 * n / t_ray:.0f} cases/h")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
