"""Choosing the number of training epochs of a MIL aggregator by inner cross-validation.

With ``select_epochs: [10, 20, 40]`` in the MIL config, :func:`fit_mil_selected` splits the bags
it is given (the *training* bags of an outer fold, never its test bags) into ``inner_folds``
stratified folds, trains one network per inner fold to the largest candidate while keeping a
snapshot at each candidate (:func:`~medseg.mil.fit.fit_mil_path`), scores every
candidate on the pooled out-of-fold predictions, and trains the final network on all the bags for
the chosen number of epochs. Score: accuracy at the config's threshold; ties go to the lower
log-loss, then to fewer epochs.

>>> pick_epochs({10: (0.80, 0.45), 20: (0.85, 0.40), 40: (0.85, 0.42)})
20
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.metrics.classification import accuracy
from medseg.mil.bags import Bags
from medseg.mil.fit import MILEnsemble, MILTrainConfig, fit_mil, fit_mil_path, predict_bags, stratified_folds

log = logging.getLogger("medseg.training.mil")

__all__ = ["fit_mil_selected", "inner_cv_scores", "pick_epochs"]


def pick_epochs(scores: dict[int, tuple[float, float]]) -> int:
    """Best candidate: highest accuracy, then lowest log-loss, then fewest epochs."""
    if not scores:
        raise ConfigError("mil: no epoch candidates to choose from")
    return min(scores, key=lambda e: (-scores[e][0], scores[e][1], e))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def inner_cv_scores(bags: Bags, cfg: MILTrainConfig, *, seed: int = 0,
                    device: torch.device | str = "cpu") -> dict[int, tuple[float, float]]:
    """(accuracy, log-loss) of each ``cfg.select_epochs`` candidate on the pooled out-of-fold
    predictions of a stratified ``cfg.inner_folds``-fold split of ``bags``."""
    marks = sorted(set(cfg.select_epochs))
    labels = np.asarray(bags.labels, dtype=float)
    fewest = int(min((labels == 1).sum(), (labels == 0).sum()))
    if fewest < cfg.inner_folds:
        raise InputError(f"select_epochs: an inner {cfg.inner_folds}-fold CV needs at least {cfg.inner_folds} "
                         f"training bags of each class, the rarer class has {fewest}; lower inner_folds",
                         code="too_few_bags")
    oof = {e: np.full(len(bags), np.nan) for e in marks}
    rng = np.random.default_rng(seed + 104729)
    for j, test in enumerate(stratified_folds(bags.labels, cfg.inner_folds, rng)):
        train = np.setdiff1d(np.arange(len(bags)), test)
        path = fit_mil_path(bags.subset(train), cfg, marks, seed=seed + 1009 * (j + 1), device=device)
        for e in marks:
            oof[e][test] = predict_bags(path[e], bags.subset(test))
    return {e: (accuracy(labels, oof[e] >= cfg.threshold), _log_loss(labels, oof[e])) for e in marks}


def fit_mil_selected(bags: Bags, cfg: MILTrainConfig, *, seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[MILEnsemble, dict[str, Any]]:
    """Train on ``bags``; with ``cfg.select_epochs`` the epoch count is first chosen by inner CV on
    these bags. Returns the ensemble and what was chosen (``{"epochs": e, "inner": scores}``).
    Too few bags of a class for the inner folds: a warning, and ``cfg.epochs`` is used.
    With ``cfg.select_grid`` the whole configuration is chosen, with ``cfg.bagging`` the inner networks
    averaged (:func:`medseg.mil.grid.select_and_fit`)."""
    if cfg.select_grid or cfg.bagging:
        from medseg.mil.grid import select_and_fit

        try:
            return select_and_fit(bags, [np.arange(len(bags))], [seed], cfg, cfg.select_grid, device=device)[0]
        except InputError as exc:
            if exc.code != "too_few_bags":
                raise
            log.warning("%s; training the configured model for epochs=%d instead", exc.problem, cfg.epochs)
            return fit_mil(bags, cfg, seed=seed, device=device), {"epochs": cfg.epochs,
                                                                  "chosen": "skipped: too few bags"}
    if not cfg.select_epochs:
        return fit_mil(bags, cfg, seed=seed, device=device), {"epochs": cfg.epochs}
    try:
        scores = inner_cv_scores(bags, cfg, seed=seed, device=device)
    except InputError as exc:
        if exc.code != "too_few_bags":
            raise
        log.warning("%s; training for epochs=%d instead", exc.problem, cfg.epochs)
        return fit_mil(bags, cfg, seed=seed, device=device), {"epochs": cfg.epochs, "inner": "skipped: too few bags"}
    best = pick_epochs(scores)
    log.debug("inner CV epochs %s -> %d", scores, best)
    ens = fit_mil(bags, replace(cfg, epochs=best), seed=seed, device=device)
    return ens, {"epochs": best, "inner": {str(e): [round(a, 4), round(ll, 4)] for e, (a, ll) in scores.items()}}
