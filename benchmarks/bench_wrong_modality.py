"""How long ``medseg predict`` takes to refuse a case of the wrong modality (the input guard).

A synthetic abdominal CT (Hounsfield units, 3 mm, 100 x 170 x 170 voxels = 300 x 510 x 510 mm) and,
when ../shared/data is present, TotalSegmentator's example CT and MR, each given to the shipped
hippocampus MRI model in a fresh process (``python -m medseg predict``, as a user runs it). Wall
seconds from start to exit (median of ``--repeat`` runs), plus the share of it that is starting
Python + torch and loading the 5-fold bundle (a process that only does that).

    PYTHONPATH=. python benchmarks/bench_wrong_modality.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "totalsegmentator"


def _synthetic_ct(path: Path) -> None:
    rng = np.random.default_rng(0)
    a = np.full((100, 170, 170), -1000, np.int16)
    yy, xx = np.ogrid[:170, :170]
    a[:, ((yy - 85) / 70) ** 2 + ((xx - 85) / 80) ** 2 < 1] = 40
    a += rng.integers(-20, 20, size=a.shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(a.transpose(2, 1, 0), np.diag([3.0, 3.0, 3.0, 1.0])), str(path))


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, r.returncode, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--repeat", type=int, default=3, help="runs per input (median reported)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medseg_wrongmod_"))
    inputs = {"synthetic CT": work / "synthetic_ct.nii.gz"}
    _synthetic_ct(inputs["synthetic CT"])
    for name, f in (("TotalSegmentator CT", "example_ct.nii.gz"), ("TotalSegmentator MR", "example_mr_sm.nii.gz")):
        if (SHARED / f).is_file():
            inputs[name] = SHARED / f
    load = [_timed([sys.executable, "-c", "from medseg.inference.cohort import build_predictor; "
                    "build_predictor('hippocampus_unet', device='cpu')"])[0] for _ in range(args.repeat)]
    print(f"start + torch + load hippocampus_unet: {statistics.median(load):.2f} s (median of {args.repeat})")
    for name, path in inputs.items():
        times = []
        for i in range(args.repeat):
            src = work / f"in_{i}"
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            shutil.copy(path, src / path.name)
            sec, rc, out = _timed([sys.executable, "-m", "medseg", "predict", "--model", "hippocampus_unet", "--input",
                                   str(src), "--output", str(work / f"out_{name[:3]}_{i}"), "--device", "cpu",
                                   "--no-progress", "-q"])
            assert rc == 1 and "wrong_input" in out, out
            times.append(sec)
        print(f"{name}: refused in {statistics.median(times):.2f} s (median of {args.repeat}; "
              f"{', '.join(f'{t:.2f}' for t in times)})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
