"""Sliding-window probabilities finished slab by slab: large volumes without a float32 accumulator.

:func:`medseg.inference.sliding_window` adds every window's weighted output into one float32 tensor
of the whole volume and activates it at the end: on a 512 x 512 x 300 CT resampled for the
hippocampus model, 3 classes x 37 M voxels = 426 MiB, the largest block of a CPU prediction.
Windows are visited in C order, the first axis slowest, so once the windows starting at ``z`` are
reached nothing is added before ``z`` any more. :func:`stream_probabilities` keeps a float32 buffer
only as deep as the windows in flight, and finishes each slab it leaves behind (divided by the
normaliser, activated) into a compact result, float16 by default (2 bytes a voxel a class, half of
the accumulator). Before that rounding the values are those of the whole-volume path: the same
window outputs added in the same order with the same fused step, the same normaliser sums
(tests/inference/test_stream.py); float16 rounds probabilities by at most 2**-12 above 0.5 and
finer below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medseg.inference.sliding_window import forward_batch, window_index
from medseg.inference.tta import activate_
from medseg.inference.windows import importance_map, normaliser_rows, pad_amounts, window_grid


def can_stream(image: torch.Tensor, roi: Sequence[int]) -> bool:
    """Whether :func:`stream_probabilities` takes this ``(N, C, *spatial)`` image: one case, a window
    of the image's rank, no padding (every axis at least a window long), on the CPU."""
    return (image.ndim == 2 + len(roi) and image.shape[0] == 1 and image.device.type == "cpu"
            and not any(a or b for a, b in pad_amounts(tuple(image.shape[2:]), roi)))


def stream_probabilities(model, image: torch.Tensor, roi: Sequence[int], overlap: float | Sequence[float] = 0.5, *,
                         batch_size: int = 4, blend: str = "gaussian", sigma_scale: float = 0.125,
                         flips: Sequence[tuple[int, ...]] = ((),), activation: str = "softmax",
                         dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Blended, activated window outputs of ``model`` over ``image`` ``(1, C, *spatial)`` as ``dtype``
    ``(1, K, *spatial)``; ``flips``: tensor dims of the window-level mirroring (as sliding_window's).
    Only for what :func:`can_stream` accepts."""
    roi = tuple(int(r) for r in roi)
    if not can_stream(image, roi):
        raise ValueError(f"stream_probabilities takes one unpadded CPU case, got {tuple(image.shape)} for {roi}")
    spatial = tuple(image.shape[2:])
    ov = (float(overlap),) * len(roi) if isinstance(overlap, (int, float)) else tuple(float(o) for o in overlap)
    starts = window_grid(spatial, roi, ov)
    batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    # the buffer spans the first-axis extent of the windows not yet finished: a batch's, at most
    depth = max(max(s[0] for s in b) + roi[0] - b[0][0] for b in batches)
    w = None if blend == "constant" else importance_map(roi, blend=blend, sigma_scale=sigma_scale)  # as _accumulate
    xbuf = torch.empty((batch_size, image.shape[1], *roi), dtype=image.dtype)

    def forward(chunk: list[tuple[int, ...]]) -> torch.Tensor:
        x = xbuf[:len(chunk)]
        for j, start in enumerate(chunk):
            x[j].copy_(image[window_index((0, slice(None)), start, roi)])
        return forward_batch(model, x, roi, False, tuple(flips))

    first = forward(batches[0])
    buf = torch.zeros((1, first.shape[1], depth, *spatial[1:]), dtype=torch.float32)
    out = torch.empty((1, first.shape[1], *spatial), dtype=dtype)
    lo = 0

    def finish(a: int, b: int) -> None:
        """Slab ``a:b`` of the volume (buffer rows ``0:b - a``) is complete: normalise, activate, store, shift."""
        n = b - a
        seg = buf[:, :, :n]
        seg.div_(torch.from_numpy(normaliser_rows(spatial, roi, starts, a, b, blend=blend, sigma_scale=sigma_scale)))
        out[:, :, a:b] = activate_(seg, activation)
        for r0 in range(0, depth - n, n):       # move the rest to the front, a block that does not overlap at a time
            r1 = min(r0 + n, depth - n)
            buf[:, :, r0:r1] = buf[:, :, r0 + n:r1 + n]
        buf[:, :, max(depth - n, 0):] = 0.0

    for i, chunk in enumerate(batches):
        if chunk[0][0] > lo:
            finish(lo, chunk[0][0])
            lo = chunk[0][0]
        pred = first if i == 0 else forward(chunk)
        for start, p in zip(chunk, pred):
            view = buf[window_index((0, slice(None)), (start[0] - lo, *start[1:]), roi)]
            if w is None:
                view.add_(p)
            else:
                view.addcmul_(p, w)
    finish(lo, spatial[0])
    return out

