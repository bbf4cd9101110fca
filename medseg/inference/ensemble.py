"""Ensembles of several models, folds or bundles: the mean of their probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medseg.errors import ConfigError
from medseg.inference.tta import to_probabilities

Predictor = Callable[[torch.Tensor], torch.Tensor]


def ensemble(
    predictors: Sequence[Predictor],
    image: torch.Tensor,
    *,
    activation: str = "softmax",
    weights: Sequence[float] | None = None,
    output_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Weighted mean of ``activation(p(image))`` over ``predictors``.

    Parameters
    ----------
    predictors : sequence of callable
        Each maps ``(N, C, *spatial)`` to ``(N, K, *spatial)`` logits (all with the same ``K``),
        e.g. one sliding-window predictor per fold. They run one after the other; only the running
        sum is kept, so memory does not grow with the number of models.
    activation : {"softmax", "sigmoid", "none"}
        Use ``"none"`` when the predictors already return probabilities (e.g. :func:`mirror_tta`).
    weights : sequence of float, optional
        Non-negative weight per predictor (normalised to sum 1); equal by default.
    output_device : optional
        Where the sum is kept; default the device of the first prediction.

    Returns
    -------
    torch.Tensor
        ``(N, K, *spatial)`` float32 mean probabilities.
    """
    if len(predictors) == 0:
        raise ConfigError("ensemble needs at least one model")
    w = [1.0] * len(predictors) if weights is None else [float(v) for v in weights]
    if len(w) != len(predictors) or any(v < 0 for v in w) or sum(w) <= 0:
        raise ConfigError(f"ensemble weights must be {len(predictors)} non-negative numbers with a positive "
                          f"sum, got {weights}")
    total = None
    with torch.no_grad():
        for i, (pred, wi) in enumerate(zip(predictors, w)):
            p = to_probabilities(pred(image), activation)
            if output_device is not None:
                p = p.to(output_device)
            if total is None:
                total = p * (wi / sum(w))
            else:
                if p.shape != total.shape:
                    raise ConfigError(f"ensemble member {i} returned shape {tuple(p.shape)}, "
                                      f"member 0 returned {tuple(total.shape)}")
                total.add_(p.to(total.device), alpha=wi / sum(w))
    return total
