"""Validation during training: whole-volume prediction and Dice per label.

Volumes of the size of a training patch (hippocampus: ~40 x 56 x 40) are predicted whole: the
image is zero-padded symmetrically to a multiple of the model's downsampling factor, predicted in
one forward pass and cropped back. (To be swapped for ``medseg.inference.sliding_window`` for
volumes much larger than a patch.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice ``2|P & R| / (|P| + |R|)`` of each label; 1.0 when the label is absent from both (the
    convention of ``medseg.metrics``, used when it is installed).

    >>> dice_per_label(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), [1, 2, 3])
    {1: 0.6666666666666666, 2: 0.6666666666666666, 3: 1.0}
    """
    try:
        from medseg.metrics.overlap import dice_from_counts, label_counts
    except ImportError:  # the metrics package is not part of this checkout: count here
        dice_from_counts, label_counts = _dice_from_counts, _label_counts
    counts = label_counts(np.asarray(ref), np.asarray(pred), list(labels))
    return {int(lab): float(dice_from_counts(n_ref=int(c[0]), n_pred=int(c[1]), n_both=int(c[2])))
            for lab, c in zip(labels, counts)}


def _dice_from_counts(*, n_ref: int, n_pred: int, n_both: int) -> float:
    return 1.0 if n_ref + n_pred == 0 else 2.0 * n_both / (n_ref + n_pred)


def _label_counts(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """(len(labels), 3) counts ``n_ref, n_pred, n_both`` from one joint histogram."""
    r, p = ref.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    n = int(max(p.max(initial=0), r.max(initial=0), max(labels, default=0))) + 1
    cm = np.bincount(r * n + p, minlength=n * n).reshape(n, n)
    idx = np.asarray(list(labels), dtype=np.int64)
    return np.stack([cm[idx, :].sum(axis=1), cm[:, idx].sum(axis=0), cm[idx, idx]], axis=1)


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
