"""Sliding-window inference: a model with a fixed patch size applied to a volume of any size.

>>> import torch
>>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
>>> out = sliding_window(net, torch.zeros(1, 1, 40, 50, 30), (32, 32, 32))
>>> tuple(out.shape)
(1, 2, 40, 50, 30)

Window placement and Gaussian weights are those of MONAI's ``sliding_window_inference`` (see
:mod:`medseg.inference.windows`), so the two give the same logits; medseg differs in how it
stitches: the weights are summed once per volume shape (cached, one channel) instead of per
call, and window outputs are added in place into one preallocated tensor. Gradients are off
(``torch.no_grad``); ``inference_mode`` is not used because its tensors cannot be modified in
place afterwards, which callers (argmax, masking, post-processing) often want.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medseg.errors import ConfigError, MedsegError
from medseg.inference.windows import (
    divide_by_normaliser_,
    importance_map,
    pad_amounts,
    slice_flips,
    window_grid,
)

log = logging.getLogger(__name__)

Model = Callable[[torch.Tensor], torch.Tensor]


def sliding_window(
    model: Model,
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 4,
    blend: str = "gaussian",
    *,
    sigma_scale: float = 0.125,
    axis: int = 0,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    amp: bool = True,
    pad_value: float = 0.0,
    mirror_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Run ``model`` over ``image`` window by window and blend the window outputs.

    Parameters
    ----------
    model : callable
        Maps a ``(B, C, *roi_size)`` tensor to ``(B, K, *roi_size)`` logits. Put modules in
        evaluation mode (``model.train(False)``) first; the model is not modified.
    image : torch.Tensor
        ``(N, C, *spatial)``; any spatial size, also smaller than the window (it is padded with
        ``pad_value``, centred, and the output cropped back).
    roi_size : int or sequence of int
        Window size in voxels. With one size fewer than the spatial dimensions of ``image``
        (a 2D model on a ``(N, C, D, H, W)`` volume) the volume is processed slice by slice
        along spatial axis ``axis`` (0 = first spatial axis), windows of several slices sharing
        a forward pass.
    overlap : float or sequence of float
        Fraction in ``[0, 1)`` of a window shared with its neighbour, per axis or for all.
    batch_size : int
        Windows per forward pass.
    blend : {"gaussian", "constant"}
        Gaussian importance weights (``sigma = roi * sigma_scale``) or plain averaging.
    device : torch.device or str, optional
        Where the model runs. Default: the device of the model's parameters, else ``image.device``.
    output_device : torch.device or str, optional
        Where the output is accumulated and returned (``"cpu"`` keeps GPU memory independent of
        the volume size). Default: ``device``.
    amp : bool
        Autocast to float16 on CUDA (ignored on CPU). Accumulation is always float32.
    mirror_axes : sequence of int
        Mirroring test-time augmentation inside the window loop (nnU-Net's way): each batch of
        windows also goes through the model flipped along every non-empty subset of these
        spatial axes (0 = first spatial axis of ``image``), and the flipped-back outputs are
        averaged before blending: ``2**len(mirror_axes)`` forward passes per batch, no extra
        memory of the volume's size. The result is the mean of the *outputs* (logits), so it
        equals whole-volume mirroring with ``mirror_tta(..., activation="none")`` whenever the
        window grid is symmetric along those axes (the window starts mirror onto window starts
        and any padding is even); otherwise windows sit a few voxels apart and the two differ
        slightly. For a 2D model the slicing ``axis`` is ignored here (flipping the slice order
        changes nothing).

    Returns
    -------
    torch.Tensor
        ``(N, K, *spatial)`` float32 blended logits on ``output_device``. If CUDA runs out of
        memory even with one window per pass, accumulation moves to the CPU and the result is
        returned there (same values). Only ``torch.OutOfMemoryError`` triggers this fallback:
        first the window batch is halved, then the accumulator moves to the CPU.
    """
    if not isinstance(image, torch.Tensor) or image.ndim < 3:
        raise ConfigError(f"image must be a (N, C, *spatial) tensor, got {type(image).__name__} "
                          f"with shape {tuple(getattr(image, 'shape', ()))}")
    n_spatial = image.ndim - 2
    roi = (int(roi_size),) * n_spatial if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    dev = _model_device(model, image) if device is None else torch.device(device)
    out_dev = dev if output_device is None else torch.device(output_device)
    if isinstance(model, torch.nn.Module) and model.training:
        log.warning("sliding_window: model is in training mode; call model.eval() for inference")
    mirror = tuple(int(a) for a in mirror_axes)
    opts = dict(batch_size=batch_size, blend=blend, sigma_scale=sigma_scale, device=dev,
                output_device=out_dev, amp=amp, pad_value=pad_value)

    if len(roi) == n_spatial - 1:
        if not -n_spatial <= axis < n_spatial:
            raise ConfigError(f"slice axis {axis} out of range for {n_spatial} spatial dimensions")
        axis %= n_spatial
        opts["flips"] = slice_flips(mirror, n_spatial, axis)
        return _slicewise(model, image, roi, overlap, axis, opts)
    opts["flips"] = slice_flips(mirror, n_spatial, None)
    if len(roi) != n_spatial:
        raise ConfigError(f"roi_size {roi} has {len(roi)} dimensions but the image has {n_spatial} spatial "
                          f"dimensions (shape {tuple(image.shape)}); give {n_spatial} sizes, or "
                          f"{n_spatial - 1} for a slice-wise 2D model")
    return _sliding(model, image, roi, overlap, **opts)


def _model_device(model: Model, image: torch.Tensor) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return image.device


def _slicewise(model: Model, image: torch.Tensor, roi: tuple[int, ...], overlap, axis: int, opts) -> torch.Tensor:
    n, c = image.shape[:2]
    moved = image.movedim(2 + axis, 1)  # (N, D, C, *rest)
    d, rest = moved.shape[1], moved.shape[3:]
    flat = moved.reshape(n * d, c, *rest)
    if not isinstance(overlap, (int, float)):
        overlap = [o for i, o in enumerate(overlap) if i != axis] if len(overlap) == image.ndim - 2 else overlap
    out = _sliding(model, flat, roi, overlap, **opts)  # (N*D, K, *rest)
    out = out.reshape(n, d, out.shape[1], *rest).movedim(1, 2).movedim(2, 2 + axis)
    return out.contiguous()


def _sliding(model, image, roi, overlap, *, batch_size, blend, sigma_scale, device, output_device, amp, pad_value,
             flips=((),)):
    n_spatial = len(roi)
    ov = (float(overlap),) * n_spatial if isinstance(overlap, (int, float)) else tuple(float(o) for o in overlap)
    if len(ov) != n_spatial or any(not 0.0 <= o < 1.0 for o in ov):
        raise ConfigError(f"overlap must be in [0, 1) for each of the {n_spatial} window axes, got {overlap}")
    if any(r < 1 for r in roi):
        raise ConfigError(f"roi_size must be positive, got {roi}")
    spatial = tuple(image.shape[2:])
    pads = pad_amounts(spatial, roi)
    with torch.no_grad():
        if any(a or b for a, b in pads):
            flat_pad = [v for before_after in reversed(pads) for v in before_after]
            image = F.pad(image, flat_pad, mode="constant", value=pad_value)
        padded = tuple(image.shape[2:])
        starts = window_grid(padded, roi, ov)
        jobs = [(b, s) for b in range(image.shape[0]) for s in starts]
        log.debug("sliding_window: %d windows of %s over %s", len(jobs), roi, padded)
        weight = None if blend == "constant" else importance_map(roi, blend=blend, sigma_scale=sigma_scale,
                                                                 device=device)
        acc = _accumulate(model, image, roi, jobs, weight, batch_size, device, output_device, amp, flips)
        divide_by_normaliser_(acc, roi, ov, blend=blend, sigma_scale=sigma_scale)   # slab by slab when large
        if any(a or b for a, b in pads):
            crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))
            acc = acc[(slice(None), slice(None), *crop)].contiguous()
    return acc


def _accumulate(model, image, roi, jobs, weight, batch_size, device, out_dev, amp, flips) -> torch.Tensor:
    """Weighted sum of window outputs; retries a batch with fewer windows, then on the CPU, on OOM.

    Windows are cut into one reused buffer and, when the output stays on the compute device, the
    model's output is multiplied by the weights and added in one fused in-place step
    (``addcmul_``): fresh multi-megabyte allocations cost page faults on the CPU. Nothing is added
    to the accumulator before a whole batch has gone through the model, so a retry after
    ``torch.OutOfMemoryError`` starts from a clean state.
    """
    acc = None
    bs = batch_size
    xbuf = None
    i = 0
    while i < len(jobs):
        chunk = jobs[i:i + bs]
        pred = None
        try:
            if xbuf is None or xbuf.shape[0] < len(chunk):
                xbuf = torch.empty((len(chunk), image.shape[1], *roi), dtype=image.dtype, device=image.device)
            x = xbuf[:len(chunk)]
            for j, (b, start) in enumerate(chunk):
                x[j].copy_(image[window_index((b, slice(None)), start, roi)])
            pred = forward_batch(model, x.to(device), roi, amp, flips)
            if pred.device != out_dev:
                pred = (pred if weight is None else pred * weight).to(out_dev)
                fused = False
            else:
                fused = weight is not None
            if acc is None:
                acc = torch.zeros((image.shape[0], pred.shape[1], *image.shape[2:]), dtype=torch.float32,
                                  device=out_dev)
        except torch.OutOfMemoryError:
            pred = None
            xbuf = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if bs > 1:
                bs = max(bs // 2, 1)
                log.warning("sliding_window: out of memory; retrying with %d windows per pass", bs)
                continue
            if out_dev.type != "cpu":
                log.warning("sliding_window: out of memory with 1 window per pass; accumulating on the CPU")
                out_dev = torch.device("cpu")
                acc = None if acc is None else acc.cpu()
                continue
            raise
        for (b, start), p in zip(chunk, pred):
            view = acc[window_index((b, slice(None)), start, roi)]
            if fused:
                view.addcmul_(p, weight)
            else:
                view.add_(p)
        i += len(chunk)
    return acc


def window_index(lead: tuple[Any, ...], start: Sequence[int], roi: Sequence[int]) -> tuple[Any, ...]:
    """Index of the window at ``start`` (size ``roi``) behind the leading indices ``lead`` (batch, channels)."""
    return (*lead, *(slice(s, s + r) for s, r in zip(start, roi)))


def forward_batch(model, x, roi, amp, flips=((),)) -> torch.Tensor:
    """The model's float32 output for a batch of windows; with several ``flips``, the mean of the
    outputs for the flipped batches, each flipped back (the model's own output is never modified)."""
    total, owned = None, False
    for dims in flips:
        y = _call(model, torch.flip(x, dims) if dims else x, roi, amp)
        if dims:
            y = torch.flip(y, dims)   # a new tensor
        if total is None:
            total, owned = y, bool(dims)
        elif owned:
            total.add_(y)
        else:
            total, owned = total + y, True
    if len(flips) > 1:
        total.div_(len(flips))
    return total


def _call(model, x, roi, amp) -> torch.Tensor:
    if amp and x.device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            y = model(x)
    else:
        y = model(x)
    if not isinstance(y, torch.Tensor) or y.ndim != x.ndim or tuple(y.shape[2:]) != roi or y.shape[0] != x.shape[0]:
        raise MedsegError(
            f"sliding_window: the model must return (B, K, *{roi}) for a {tuple(x.shape)} input, got "
            f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}; models that change the spatial size "
            "are not supported", code="bad_model_output")
    return y.float()
