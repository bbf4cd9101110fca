"""Mirroring test-time augmentation: predict on flipped copies, flip back, average probabilities.

The TTA axes a user gives (``medseg predict --tta``, the ``predict`` stage's ``tta``) are read and
checked here, once: :func:`tta_axes_from_text`, :func:`tta_axes_from_param`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:      # torch is imported by the functions that use it: parsing axes needs none
    import torch

Predictor = Callable[["torch.Tensor"], "torch.Tensor"]

TTA_AXES = (0, 1, 2)  # the spatial axes a 3D prediction may mirror: 0 = z, 1 = y, 2 = x


def valid_tta_axes(axes: Sequence[Any]) -> bool:
    """True if ``axes`` are distinct axes of :data:`TTA_AXES` (the empty sequence is valid: no TTA)."""
    return all(isinstance(a, int) and a in TTA_AXES for a in axes) and len(set(axes)) == len(axes)


def tta_axes_from_text(text: str) -> tuple[int, ...]:
    """``medseg predict --tta AXES``: ``"0,1,2"``, ``"1, 2"``; ``""`` is no TTA. ConfigError otherwise.

    >>> tta_axes_from_text("2,0")
    (2, 0)
    """
    try:
        axes = tuple(int(a) for a in str(text).replace(" ", "").split(",") if a != "")
    except ValueError:
        raise ConfigError(f"--tta takes axes like 0,1,2 (0 = z, 1 = y, 2 = x), got {text!r}",
                          code="bad_params") from None
    if not valid_tta_axes(axes):
        raise ConfigError(f"--tta axes must be distinct values of 0, 1, 2, got {text!r}", code="bad_params")
    return axes


def tta_axes_from_param(tta: Any) -> tuple[int, ...]:
    """The ``predict`` stage's YAML ``tta``: ``true`` (all axes), ``false``/null/``[]`` (none) or a
    list of distinct axes such as ``[1, 2]``. ConfigError otherwise.

    >>> tta_axes_from_param(True), tta_axes_from_param([2]), tta_axes_from_param(False)
    ((0, 1, 2), (2,), ())
    """
    if tta is True:
        return TTA_AXES
    if tta in (False, None, "", []):
        return ()
    if isinstance(tta, (list, tuple)) and valid_tta_axes(tta):
        return tuple(tta)
    raise ConfigError(f"stage 'predict': tta must be true/false or a list of axes from 0, 1, 2, got {tta!r}",
                      code="bad_params")


def to_probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """``"softmax"`` over the channel axis 1, ``"sigmoid"`` per channel, or ``"none"`` (already probabilities)."""
    import torch

    if activation == "softmax":
        return torch.softmax(logits.float(), dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits.float())
    if activation == "none":
        return logits.float()
    raise ConfigError(f"activation '{activation}' is not one of softmax, sigmoid, none")


def mirror_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All ``2**len(axes)`` subsets of ``axes``, the empty one (no flip) first.

    >>> mirror_subsets((0, 2))
    [(), (0,), (2,), (0, 2)]
    """
    axes = tuple(axes)
    if len(set(axes)) != len(axes):
        raise ConfigError(f"mirror axes must be distinct, got {axes}")
    return [c for k in range(len(axes) + 1) for c in combinations(axes, k)]


#: voxels (all channels) an in-place activation or flipped add works on at a time
CHUNK_VOXELS = 1 << 20   # 4 MiB of float32: a CT's softmax needs no 50 MiB slabs beside its accumulator


def activate_(logits: torch.Tensor, activation: str, *, chunk_voxels: int = CHUNK_VOXELS) -> torch.Tensor:
    """:func:`to_probabilities` of a float32 ``(N, K, *spatial)`` tensor written over it, a slab of the first
    spatial axis at a time (the values of the whole-tensor call: each voxel's are computed alone), so no
    second tensor of its size is needed (on the CPU; elsewhere one whole-tensor call). Returns ``logits``.

    >>> t = torch.tensor([[[0.0, 1.0], [0.0, -1.0]]])   # (N=1, K=2, 2 voxels)
    >>> activate_(t, "softmax") is t, [round(v, 4) for v in t[0, 0].tolist()]
    (True, [0.5, 0.8808])
    """
    import torch

    if activation not in ("softmax", "sigmoid", "none"):
        to_probabilities(logits[:0], activation)    # the error for an unknown activation
    if activation == "none":
        return logits
    if logits.dtype != torch.float32 or logits.ndim < 3:
        raise ConfigError(f"activate_ needs a float32 (N, K, *spatial) tensor, got {logits.dtype} "
                          f"{tuple(logits.shape)}")
    if logits.device.type != "cpu":    # GPU kernels may split the work otherwise: one call, as before
        return logits.copy_(to_probabilities(logits, activation))
    n = logits.shape[2]
    plane = max(1, logits[0, 0, :1].numel())
    # torch's kernels vectorise along the voxels and finish a tensor with a partial vector, computed slightly
    # differently: slabs whose voxel count is a multiple of 64 (any vector width) leave that tail where the
    # whole-tensor call has it, so every voxel gets the very same arithmetic
    align = 64 // math.gcd(plane, 64)
    step = max(align, int(chunk_voxels) // max(1, logits[:, :, :1].numel()) // align * align)
    for z0 in range(0, n, step):
        part = logits[:, :, z0:z0 + step]
        part.copy_(to_probabilities(part, activation))
    return logits


def add_flipped_(total: torch.Tensor, p: torch.Tensor, dims: Sequence[int], *,
                 chunk_voxels: int = CHUNK_VOXELS) -> torch.Tensor:
    """``total += torch.flip(p, dims)`` (same shapes, ``dims`` tensor dims >= 2), a slab of dim 2 at a time:
    bitwise the same sums without a flipped copy of ``p``. Returns ``total``."""
    import torch

    dims = tuple(int(d) for d in dims)
    n = total.shape[2]
    step = max(1, int(chunk_voxels) // max(1, total[:, :, :1].numel()))
    for z0 in range(0, n, step):
        z1 = min(z0 + step, n)
        src = p[:, :, n - z1:n - z0] if 2 in dims else p[:, :, z0:z1]
        total[:, :, z0:z1] += torch.flip(src, dims) if dims else src
    return total


def mirror_tta(
    predict: Predictor,
    image: torch.Tensor,
    *,
    axes: Sequence[int] = (0, 1, 2),
    activation: str = "softmax",
    group: int = 1,
) -> torch.Tensor:
    """Average of ``activation(predict(flip(image)))`` flipped back, over every subset of ``axes``.

    Parameters
    ----------
    predict : callable
        ``(N, C, *spatial)`` -> ``(N, K, *spatial)`` logits, e.g.
        ``lambda x: sliding_window(net, x, (64, 64, 64))``. A float32 result that shares no memory with
        its input is taken over: the activation is written over it (:func:`activate_`), so memory holds
        the running mean and one prediction, not also their activated and flipped copies.
    image : torch.Tensor
        ``(N, C, *spatial)``.
    axes : sequence of int
        Spatial axes to mirror (0 = first spatial axis); ``()`` means a single plain prediction.
    activation : {"softmax", "sigmoid", "none"}
        Turns each prediction into probabilities before averaging.
    group : int
        Flipped copies given to ``predict`` in one call, stacked along the batch axis (``predict`` must
        treat the images of a batch independently, as :func:`~medseg.inference.sliding_window` does).
        A volume of one or two windows then fills the network's batch with its flips instead of one
        short batch per flip: the same windows through the same network, in fewer, fuller passes.
        Memory: ``group`` predictions at a time.

    Returns
    -------
    torch.Tensor
        ``(N, K, *spatial)`` float32 mean probabilities, on the device ``predict`` returns.
    """
    import torch

    n_spatial = image.ndim - 2
    for a in axes:
        if not 0 <= a < n_spatial:
            raise ConfigError(f"mirror axis {a} out of range for {n_spatial} spatial dimensions "
                              f"(axes count from 0 = first spatial axis)")
    if not isinstance(group, int) or group < 1:
        raise ConfigError(f"mirror_tta: group must be a whole number >= 1, got {group!r}")
    subsets = mirror_subsets(axes)
    n = image.shape[0]
    total = None
    with torch.no_grad():
        for g0 in range(0, len(subsets), group):
            flips = [[2 + a for a in flip] for flip in subsets[g0:g0 + group]]
            xs = [torch.flip(image, dims) if dims else image for dims in flips]
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            del xs
            out = predict(x)
            owned = out.dtype == torch.float32 and out.untyped_storage().data_ptr() not in (
                x.untyped_storage().data_ptr(), image.untyped_storage().data_ptr())
            del x
            if activation == "none":
                ps = out.float()
            else:
                ps = activate_(out if owned else out.float().clone(), activation)
            del out
            for i, dims in enumerate(flips):
                p = ps[i * n:(i + 1) * n]
                if total is None:
                    total = p.clone() if activation == "none" or len(flips) > 1 else p  # not predict's own tensor
                    if dims:
                        total = torch.flip(total, dims)
                else:
                    add_flipped_(total, p, dims)
                del p
            del ps
        total /= len(subsets)
    return total
