"""Make the stand-in predictions in data_samples/hippocampus/pred/ from the reference labels.

Until medseg ships a trained model (the predict issue), the demo scores these deterministic,
documented perturbations of the reference masks: per case a 1-voxel shift, a dilation, an erosion,
or a missed structure (posterior removed), so that every status of the metrics table shows up.

Run from the repository root: ``python data_samples/make_sample_predictions.py``.
"""

from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.io import read_volume, write_volume

ROOT = Path(__file__).resolve().parent / "hippocampus"


def perturb(lab: np.ndarray, how: str) -> np.ndarray:
    out = np.zeros_like(lab)
    ball = ndimage.generate_binary_structure(3, 1)
    for k in (1, 2):
        m = lab == k
        if how == "shift":
            m = np.roll(m, 1, axis=1)
        elif how == "dilate":
            m = ndimage.binary_dilation(m, ball) & ((lab == 0) | m)
        elif how == "erode":
            m = ndimage.binary_erosion(m, ball)
        elif how == "miss_posterior" and k == 2:
            m = np.zeros_like(m)
        out[m] = k
    return out


PLAN = {"hippocampus_001": "shift", "hippocampus_003": "dilate", "hippocampus_004": "erode",
        "hippocampus_006": "miss_posterior"}

if __name__ == "__main__":
    for case, how in PLAN.items():
        ref = read_volume(ROOT / "labels" / f"{case}.nii.gz", is_label=True)
        pred = ref.with_array(perturb(np.asarray(ref.array), how).astype(np.uint8))
        write_volume(pred, ROOT / "pred" / f"{case}.nii.gz")
        print(case, how)
