"""Segmentation losses: soft Dice + cross-entropy, with deep-supervision weighting.

Soft Dice per foreground class is ``(2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)`` over the
voxels of each sample (``batch_dice=False``) or of the whole batch (``batch_dice=True``); the loss
is ``1 - mean`` over classes 1..K-1 (background excluded, as nnU-Net does).

>>> import torch
>>> logits = torch.tensor([[[[[9.0, -9.0]]], [[[-9.0, 9.0]]]]])   # (N=1, C=2, 1, 1, 2)
>>> target = torch.tensor([[[[0, 1]]]])
>>> round(float(soft_dice_loss(logits, target)), 4)
0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool = False,
                   eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice of the foreground classes.

    logits (N, C, *spatial), target (N, *spatial) int64 with values in [0, C).
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, probs.ndim)) if batch_dice else tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    fg = dice[..., 1:] if probs.shape[1] > 1 else dice
    return 1 - fg.mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, *, kind: str = "dice_ce", batch_dice: bool = False
             ) -> torch.Tensor:
    """``dice_ce`` (sum of both), ``dice`` or ``ce`` for logits (N, C, *spatial) and target (N, *spatial)."""
    loss = logits.new_zeros((), dtype=torch.float32)
    if kind in ("dice_ce", "ce"):
        loss = loss + F.cross_entropy(logits.float(), target)
    if kind in ("dice_ce", "dice"):
        loss = loss + soft_dice_loss(logits, target, batch_dice=batch_dice)
    return loss


def deep_supervision_weights(n: int) -> list[float]:
    """Weights 1, 1/2, 1/4 ... for outputs highest resolution first, normalised to sum 1.

    >>> deep_supervision_weights(3)
    [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    w = [0.5 ** i for i in range(n)]
    s = sum(w)
    return [x / s for x in w]


def downsample_target(target: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of an integer target (N, *spatial) to ``size``."""
    if tuple(target.shape[1:]) == tuple(size):
        return target
    t = F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")
    return t[:, 0].long()


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, *, kind: str = "dice_ce",
                          batch_dice: bool = False) -> torch.Tensor:
    """Weighted sum of :func:`seg_loss` over outputs (highest resolution first); each output is
    compared with the target resized (nearest) to its spatial size."""
    weights = deep_supervision_weights(len(outputs))
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for w, out in zip(weights, outputs):
        total = total + w * seg_loss(out, downsample_target(target, out.shape[2:]), kind=kind, batch_dice=batch_dice)
    return total
