"""What DICOM SEG + statistics + preview add to a ``medseg predict`` (issue 16 goal: <= 20 %).

    PYTHONPATH=. python benchmarks/bench_predict_outputs.py [--rounds 3] [--folds 0] [--tta]

The hippocampus samples (``data_samples/hippocampus/images``, 3 MRI cases) are first written as
DICOM MR series (synthetic headers, pydicom; same voxels and geometry) so that a DICOM SEG can be
made. Then ``python -m medseg predict --model hippocampus_unet --device cpu`` runs as a separate
process, exactly as a user runs it, in two variants, A/B interleaved (ABBA...) ``--rounds`` times:

* **A**: the label maps only (NIfTI);
* **B**: the same plus ``--output-format dicom-seg --statistics --preview``.

Reported: process wall time and CPU time (user + sys; less sensitive to other jobs on a shared
machine) per variant (median over rounds), the ratios B/A, and the writer
thread's time per case from ``timings.csv`` (``write_s``: label map only in A, every output in B).
By default one fold without test-time augmentation (the fastest predict, so the largest relative
overhead); ``--folds all --tta`` gives the shipped default (5 folds x 8 mirrorings).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLES = REPO / "data_samples" / "hippocampus" / "images"
LPS = np.diag([-1.0, -1.0, 1.0])


def write_dicom_series(vol, folder: Path, *, series_number: int = 1) -> Path:
    """A Volume as a DICOM MR series (one file per z plane; synthetic, identifier-free headers)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(vol.array)
    top = float(np.abs(arr).max()) or 1.0
    integral = bool(np.allclose(arr, np.round(arr))) and top <= 32767
    slope = 1.0 if integral else top / 30000      # float images: int16 with a RescaleSlope
    pix = np.round(arr / slope).astype(np.int16)
    a = vol.affine
    row = LPS @ vol.direction[:, 2]         # x axis (increasing column) in LPS
    col = LPS @ vol.direction[:, 1]         # y axis (increasing row)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(pix.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "BENCH^SYNTHETIC", "bench"
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", series_number, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in LPS @ (a[:3, :3] @ [k, 0, 0] + a[:3, 3])]
        ds.PixelSpacing = [float(vol.spacing_mm[1]), float(vol.spacing_mm[2])]
        ds.SliceThickness = float(vol.spacing_mm[0])
        ds.Rows, ds.Columns = pix.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.ascontiguousarray(pix[k]).tobytes()
        pydicom.dcmwrite(folder / f"{k:04d}.dcm", ds, enforce_file_format=True)
    return folder


def run(src: Path, out: Path, extra: list[str], base: list[str]) -> tuple[float, float, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "medseg", "predict", "--model", "hippocampus_unet", "--input", str(src),
           "--output", str(out), "--device", "cpu", "--no-progress", *base, *extra]
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"medseg predict failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    with open(out / "timings.csv", newline="") as fh:
        writes = [float(r["write_s"]) for r in csv.DictReader(fh)]
    return wall, cpu, writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--folds", default="0", help="folds of the shipped bundle, or 'all' (default 0)")
    ap.add_argument("--tta", action="store_true", help="the bundle's default mirroring (default: --no-tta)")
    args = ap.parse_args()
    from medseg.io import read_volume

    base = ([] if args.folds == "all" else ["--folds", args.folds]) + ([] if args.tta else ["--no-tta"])
    variants = {"A": [], "B": ["--output-format", "dicom-seg", "--statistics", "--preview"]}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cohort = tmp / "dicom"
        for i, f in enumerate(sorted(SAMPLES.glob("*.nii.gz"))):
            write_dicom_series(read_volume(f), cohort / f.name.replace(".nii.gz", ""), series_number=i + 1)
        walls: dict[str, list[float]] = {"A": [], "B": []}
        cpus: dict[str, list[float]] = {"A": [], "B": []}
        writes: dict[str, list[float]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for v in ("A", "B") if r % 2 == 0 else ("B", "A"):
                wall, cpu, w = run(cohort, tmp / f"out_{v}_{r}", variants[v], base)
                walls[v].append(wall)
                cpus[v].append(cpu)
                writes[v] += w
                print(f"round {r} {v}: {wall:.2f} s wall, {cpu:.2f} s CPU, write {sum(w):.3f} s for {len(w)} cases",
                      flush=True)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    a, b = statistics.median(walls["A"]), statistics.median(walls["B"])
    wa, wb = statistics.median(writes["A"]), statistics.median(writes["B"])
    print(f"\npredict {' '.join(base) or '(bundle defaults)'} on {len(writes['A']) // args.rounds} DICOM cases, "
          f"{args.rounds} rounds interleaved, 1-min load average at the end {load:.1f} (cpu count {os.cpu_count()})")
    for v, name, med in (("A", "A (NIfTI only):                      ", a),
                         ("B", "B (+ DICOM SEG, statistics, preview):", b)):
        print(f"{name} median wall {med:.2f} s  (all: {', '.join(f'{x:.2f}' for x in walls[v])})")
    print(f"ratio B/A = {b / a:.3f}  (+{100 * (b / a - 1):.1f} %) wall")
    ca, cb = statistics.median(cpus["A"]), statistics.median(cpus["B"])
    print(f"CPU time (user + sys of the process, less sensitive to the load): median {ca:.2f} s (A) vs {cb:.2f} s "
          f"(B): ratio {cb / ca:.3f} (+{100 * (cb / ca - 1):.1f} %)")
    print(f"writer thread per case: median {wa * 1000:.0f} ms (A) vs {wb * 1000:.0f} ms (B)")


if __name__ == "__main__":
    main()
