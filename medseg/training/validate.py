"""Validation during training: whole-volume prediction and Dice per label.

Volumes of the size of a training patch (hippocampus: ~40 x 56 x 40) are predicted whole: the
image is zero-padded symmetrically to a multiple of the model's downsampling factor, predicted in
one forward pass and cropped back. (To be swapped for ``medseg.inference.sliding_window`` for
volumes much larger than a patch.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.metrics.overlap import dice_per_label

__all__ = ["pad_to_multiple", "predict_logits", "dice_per_label", "validate"]


def pad_to_multiple(x: torch.Tensor, divisor: int, *, min_size: Sequence[int] | None = None):
    """Zero-pad (N, C, *spatial) symmetrically so each spatial size is a multiple of ``divisor``
    (and at least ``min_size``). Returns the padded tensor and the slices that undo it."""
    spatial = x.shape[2:]
    pads, crops = [], []
    for k, n in enumerate(spatial):
        target = max(n, int(min_size[k]) if min_size is not None else 0)
        target = int(math.ceil(target / divisor) * divisor)
        lo = (target - n) // 2
        pads.append((lo, target - n - lo))
        crops.append(slice(lo, lo + n))
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]   # F.pad wants the last axis first
    return F.pad(x, flat), (slice(None), slice(None), *crops)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: np.ndarray, *, divisor: int, device: torch.device,
                   amp_dtype: torch.dtype | None = None, min_size: Sequence[int] | None = None) -> torch.Tensor:
    """Logits (C_out, z, y, x) float32 on ``device`` for one image (C_in, z, y, x)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    xp, crop = pad_to_multiple(x, divisor, min_size=min_size)
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(xp)
    return out[crop][0].float()


def validate(model: torch.nn.Module, cases, *, labels: Sequence[int], divisor: int, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of per-case Dice and number of cases counted, per label (arrays of len(labels)).

    ``cases``: objects with ``image`` (C, z, y, x) and ``label`` (z, y, x) (preprocessed grid).
    """
    was_training = model.training
    model.eval()
    sums = np.zeros(len(labels))
    counts = np.zeros(len(labels))
    try:
        for case in cases:
            logits = predict_logits(model, case.image, divisor=divisor, device=device, amp_dtype=amp_dtype)
            pred = logits.argmax(0).to(torch.uint8).cpu().numpy()
            d = dice_per_label(pred, case.label, labels)
            for i, lab in enumerate(labels):
                if not math.isnan(d[lab]):
                    sums[i] += d[lab]
                    counts[i] += 1
    finally:
        model.train(was_training)
    return sums, counts
