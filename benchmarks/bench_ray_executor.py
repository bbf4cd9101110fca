"""Throughput of ``medseg predict`` on the local executor and on a one-machine Ray cluster, side by side.

    PYTHONPATH=. python benchmarks/bench_ray_executor.py --cases 16 [--cpus 2]
    PYTHONPATH=. python benchmarks/bench_ray_executor.py --profile --cases 16
    PYTHONPATH=. python benchmarks/bench_ray_executor.py --overhead --cases 300

``--profile`` splits one process's per-case time into the stages the Ray executor places apart:
read (CPU task), network forward passes (the model actor's accelerator work, timed by a forward
hook), the rest of ``predict_volume`` (resampling, normalisation, window blending, inversion and
post-processing: CPU work on the actor) and write (CPU task), and counts the forward FLOPs per case
(``torch.utils.flop_counter``), for the per-GPU estimate in docs/distributed.md.

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


def profile(n: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.inference.cohort import build_predictor, load_channels, write_prediction

    torch.set_num_threads(1)
    pred = build_predictor("hippocampus_unet", device="cpu", threads=1)
    fwd = [0.0]
    real_forward = pred.model.forward

    def timed_forward(*args, **kw):
        t = time.perf_counter()
        out = real_forward(*args, **kw)
        fwd[0] += time.perf_counter() - t
        return out

    pred.model.forward = timed_forward
    tmp = Path(tempfile.mkdtemp(prefix="medseg_raybench_prof_"))
    paths = sorted(SHARED.glob("hippocampus_*.nii.gz"))[:n]
    t_read = t_pred = t_write = 0.0
    for p in paths:
        t = time.perf_counter()
        vols = load_channels([p])
        t_read += time.perf_counter() - t
        t = time.perf_counter()
        res = pred.predict_volume(vols)
        t_pred += time.perf_counter() - t
        t = time.perf_counter()
        write_prediction(p.name.split(".")[0], res, tmp, save_probabilities=False, label_values=[0, 1, 2],
                         probability_dtype="float16")
        t_write += time.perf_counter() - t
    with FlopCounterMode(display=False) as fc:
        pred.predict_volume(load_channels([paths[0]]))
    shutil.rmtree(tmp, ignore_errors=True)
    other = t_pred - fwd[0]
    print(f"cases={n} (1 CPU thread) per case: read {t_read / n:.3f} s, forward {fwd[0] / n:.3f} s, "
          f"rest of predict_volume {other / n:.3f} s, write {t_write / n:.3f} s")
    print(f"CPU work outside the forward passes: {(t_read + other + t_write) / n:.3f} s/case; "
          f"forward FLOPs per case (case 0): {fc.get_total_flops() / 1e9:.2f} GFLOP")


def _tiny_write(cid, data, root):
    from medseg.fsutil import atomic_write_bytes

    return [atomic_write_bytes(root / f"{cid}.bin", data)]


def _identity_factory():
    return _identity


def _identity(cid, data):
    return data


def overhead(n: int, cpus: int) -> None:
    """Per-case cost of the Ray pipeline itself: no model, 1 kB cases, manifest and checksums as usual."""
    import ray

    from medseg.batch import run_batch
    from medseg.executors import RemoteStages, executor_spec

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tmp = Path(tempfile.mkdtemp(prefix="medseg_raybench_ovh_"))
    cases = [(f"c{i:04d}", bytes([i % 256]) * 1024) for i in range(n)]
    stages = RemoteStages(load=None, compute_factory=_identity_factory, write=_tiny_write, gpu=False)
    times = {}
    for name, spec in (("local", "local"), ("ray", executor_spec("ray", actors=1))):
        t = time.perf_counter()
        rep = run_batch(cases, out_dir=tmp / name, compute=_identity, write=_tiny_write, params={}, executor=spec,
                        remote=stages)
        times[name] = time.perf_counter() - t
        assert rep.count("done") == n
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    for name, t in times.items():
        print(f"{name}: {n} empty cases in {t:.1f} s = {1000 * t / n:.1f} ms/case = {3600 * n / t:.0f} cases/h ceiling")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="stage split in one process instead")
    ap.add_argument("--overhead", action="store_true", help="per-case cost of the pipeline alone (no model)")
    a = ap.parse_args()
    if a.profile:
        return profile(a.cases)
    if a.overhead:
        return overhead(a.cases, a.cpus)
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
