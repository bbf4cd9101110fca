"""Mirroring test-time augmentation: predict on flipped copies, flip back, average probabilities.

The TTA axes a user gives (``medseg predict --tta``, the ``predict`` stage's ``tta``) are read and
checked here, once: :func:`tta_axes_from_text`, :func:`tta_axes_from_param`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import torch

from medseg.errors import ConfigError

Predictor = Callable[[torch.Tensor], torch.Tensor]

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


def mirror_tta(
    predict: Predictor,
    image: torch.Tensor,
    *,
    axes: Sequence[int] = (0, 1, 2),
    activation: str = "softmax",
) -> torch.Tensor:
    """Average of ``activation(predict(flip(image)))`` flipped back, over every subset of ``axes``.

    Parameters
    ----------
    predict : callable
        ``(N, C, *spatial)`` -> ``(N, K, *spatial)`` logits, e.g.
        ``lambda x: sliding_window(net, x, (64, 64, 64))``.
    image : torch.Tensor
        ``(N, C, *spatial)``.
    axes : sequence of int
        Spatial axes to mirror (0 = first spatial axis); ``()`` means a single plain prediction.
    activation : {"softmax", "sigmoid", "none"}
        Turns each prediction into probabilities before averaging.

    Returns
    -------
    torch.Tensor
        ``(N, K, *spatial)`` float32 mean probabilities, on the device ``predict`` returns.
    """
    n_spatial = image.ndim - 2
    for a in axes:
        if not 0 <= a < n_spatial:
            raise ConfigError(f"mirror axis {a} out of range for {n_spatial} spatial dimensions "
                              f"(axes count from 0 = first spatial axis)")
    subsets = mirror_subsets(axes)
    total = None
    with torch.no_grad():
        for flip in subsets:
            dims = [2 + a for a in flip]
            x = torch.flip(image, dims) if dims else image
            p = to_probabilities(predict(x), activation)
            if dims:
                p = torch.flip(p, dims)
            if total is None:
                total = p.clone() if activation == "none" else p
            else:
                total += p
        total /= len(subsets)
    return total
