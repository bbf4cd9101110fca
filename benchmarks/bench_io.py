"""Read speed of medseg.io against its peers on the same files, side by side in one run.

    PYTHONPATH=. python benchmarks/bench_io.py [--repeat 5]

Peers: nibabel (``nib.load`` + full array + (z, y, x) transpose, no CRC/truncation checks) for
NIfTI; SimpleITK ``ImageSeriesReader`` (GDCM) for DICOM series. Prints median seconds and the ratio
medseg / peer (> 1 means medseg is slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def _median_time(fn, repeat: int) -> float:
    fn()  # warm-up (imports, page cache)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import nibabel as nib
    import SimpleITK as sitk

    from medseg.io import read_volume

    def nib_read(p):
        img = nib.load(str(p))
        return np.ascontiguousarray(np.transpose(np.asanyarray(img.dataobj), (2, 1, 0))), img.affine

    def sitk_series(d):
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(d)))
        return sitk.GetArrayFromImage(r.Execute())

    cases = [
        ("NIfTI gz", SHARED / "totalsegmentator" / "example_ct.nii.gz", "nibabel", nib_read),
        ("NIfTI gz", SHARED / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz", "nibabel", nib_read),
        ("DICOM J2K", SHARED / "totalsegmentator" / "example_ct_dicom", "SimpleITK", sitk_series),
        ("DICOM raw", SHARED / "dicom" / "udacity_study3_T2reg", "SimpleITK", sitk_series),
    ]
    print(f"{'input':48s} {'medseg s':>9s} {'peer':>10s} {'peer s':>8s} {'ratio':>6s}")
    for label, path, peer_name, peer in cases:
        if not path.exists():
            print(f"{label}: {path} missing, skipped")
            continue
        t_m = _median_time(lambda: read_volume(path), args.repeat)
        t_p = _median_time(lambda: peer(path), args.repeat)
        print(f"{label + ' ' + path.name:48s} {t_m:9.4f} {peer_name:>10s} {t_p:8.4f} {t_m / t_p:6.2f}")


if __name__ == "__main__":
    main()
