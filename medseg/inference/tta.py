"""Mirroring test-time augmentation: predict on flipped copies, flip back, average probabilities."""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import torch

from medseg.errors import ConfigError

Predictor = Callable[[torch.Tensor], torch.Tensor]


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
    with torch.inference_mode():
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
