"""Model selection inside each training set: a small fixed grid of MIL hyper-parameters scored by
an inner cross-validation on the training bags only, the one-standard-error rule choosing.

For every training set (an outer CV fold's training bags, or all labelled slides), its bags are
split into ``cfg.inner_folds`` stratified folds; every grid point is trained on each inner
training part (snapshots at each ``epochs`` value of the grid) and predicts the inner held-out
part, so every training bag gets one out-of-fold probability per candidate. A candidate's score
is its out-of-fold error rate ``err`` with standard error ``sqrt(err (1 - err) / n)``; among the
candidates whose error is at most the best error plus the best candidate's standard error, the
simplest is chosen (:func:`complexity`: fewer hidden units, fewer layers, a narrower attention, attention
before gated attention, fewer epochs, smaller learning rate, larger weight decay, more dropout). The chosen
configuration is then trained on all the training bags or, with ``bagging``, its inner networks (each trained on the
training bags less one inner fold) are averaged instead (:func:`bagged`; with no grid, bagging alone:
one candidate). All inner networks of all training sets, and then all refits, train side by side
(:func:`medseg.mil.folds.fit_jobs`). Test bags are never passed in.

>>> pick_one_se({("a",): (0.10, 0.03), ("b",): (0.12, 0.02), ("c",): (0.14, 0.02)},
...             key=lambda c: c[0] == "a")
('b',)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError, InputError
from medseg.mil.bags import Bags
from medseg.mil.fit import DEFAULT_GRID, GRID_KEYS, MILEnsemble, MILTrainConfig, empty_ensemble, stratified_folds
from medseg.mil.folds import Job, fit_jobs, predict_jobs

__all__ = ["DEFAULT_GRID", "GRID_KEYS", "grid_points", "complexity", "pick_one_se", "select_and_fit", "bagged"]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the grid's values (``epochs`` left out: snapshots of one run)."""
    bad = sorted(set(grid) - set(GRID_KEYS))
    if bad:
        raise ConfigError(f"mil: select_grid keys {bad} unknown (known: {', '.join(GRID_KEYS)})")
    if any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("mil: every select_grid entry must be a non-empty list")
    keys = [k for k in GRID_KEYS if k in grid and k != "epochs"]
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def complexity(cfg: MILTrainConfig) -> tuple:
    """Sort key, simpler first: hidden units, embedding layers, attention width, gated after plain attention,
    epochs, learning rate, then larger weight decay and dropout first."""
    return (cfg.embed_dim, cfg.embed_layers, cfg.attn_dim, "gated" in cfg.model, cfg.epochs, cfg.lr,
            -cfg.weight_decay, -cfg.dropout)


def pick_one_se(scores: Mapping[Any, tuple[float, float]], key: Callable[[Any], Any]) -> Any:
    """``scores``: candidate -> (error, standard error). The simplest (smallest ``key``) candidate
    whose error is within one standard error of the lowest error (ties of the lowest: simpler)."""
    if not scores:
        raise ConfigError("mil: no candidates to choose from")
    best = min(scores, key=lambda c: (scores[c][0], key(c)))
    limit = scores[best][0] + scores[best][1] + 1e-12
    return min((c for c in scores if scores[c][0] <= limit), key=key)


def bagged(parts: list[MILEnsemble], ref: MILEnsemble, cfg: MILTrainConfig) -> MILEnsemble:
    """The networks of ``parts`` (each trained with its own standardisation) as one ensemble that takes
    ``ref``'s standardisation: a part's inputs are ``x_ref * (std_ref / std) + (mean_ref - mean) / std``,
    which each network's first linear layer absorbs (in float64; equal predictions up to float32 rounding)."""
    models = []
    for p in parts:
        scale = torch.from_numpy(ref.std / p.std)
        shift = torch.from_numpy((ref.mean - p.mean) / p.std)
        for m in p.models:
            m = copy.deepcopy(m)
            embed = m.embed
            first = embed[0] if isinstance(embed, torch.nn.Sequential) and len(embed) else None
            if not isinstance(first, torch.nn.Linear):
                raise ConfigError("mil: bagging needs networks whose instance embedding starts with a linear layer")
            with torch.no_grad():
                w = first.weight.double()
                first.bias.copy_(first.bias.double() + w @ shift)
                first.weight.copy_(w * scale)
            models.append(m.eval())
    return MILEnsemble(models, ref.mean, ref.std, cfg, ref.in_features)


def _inner_jobs(bags: Bags, train: np.ndarray, seed: int, cfgs: list[MILTrainConfig], k: int,
                marks: tuple[int, ...]) -> tuple[list[Job], list[np.ndarray]]:
    folds = stratified_folds(bags.labels[train], k, np.random.default_rng(seed + 104729))
    jobs, tests = [], []
    for c in cfgs:
        for j, held in enumerate(folds):
            jobs.append(Job(train[np.setdiff1d(np.arange(len(train)), held)], seed + 1009 * (j + 1), c, marks))
            tests.append(train[held])
    return jobs, tests


def select_and_fit(bags: Bags, trains: list[np.ndarray], seeds: list[int], cfg: MILTrainConfig,
                   grid: dict[str, list[Any]], *, device: torch.device | str = "cpu",
                   progress: Callable[[float], None] | None = None) -> list[tuple[MILEnsemble, dict[str, Any]]]:
    """For each training set ``trains[i]`` (indices into ``bags``) choose a configuration from
    ``grid`` by inner CV on those bags only and train it on them with ``seeds[i]`` (``cfg.bagging``: average
    its inner networks instead; ``grid`` may then be empty). Returns per training set the ensemble and
    ``{"chosen": {...} (with a grid), "epochs": e, "inner_error": ..., "inner_se": ...}``."""
    points = grid_points(grid)
    marks = tuple(sorted(set(grid.get("epochs", [cfg.epochs]))))
    cfgs = [replace(cfg, **p, epochs=marks[-1]) for p in points]
    k = cfg.inner_folds
    for tr in trains:
        lab = bags.labels[tr]
        if min((lab == 1).sum(), (lab == 0).sum()) < k:
            raise InputError(f"mil: an inner {k}-fold split (model selection, bagging) needs {k} training bags of "
                             f"each class; a training set has {int((lab == 1).sum())} positive, "
                             f"{int((lab == 0).sum())} negative; lower inner_folds or turn it off", code="too_few_bags")
    jobs: list[Job] = []
    tests: list[np.ndarray] = []
    for tr, sd in zip(trains, seeds):
        new_jobs, new_tests = _inner_jobs(bags, np.asarray(tr), sd, cfgs, k, marks)
        jobs += new_jobs
        tests += new_tests
    snaps = fit_jobs(bags, jobs, device=device, progress=progress)
    flat = [(i, e) for i in range(len(jobs)) for e in marks]  # job-major: index i * len(marks) + marks.index(e)
    probs = predict_jobs(bags, [snaps[i][e] for i, e in flat], [tests[i] for i, _ in flat], device=device)
    per_set = len(cfgs) * k
    picks: list[tuple[int, int, dict[str, Any]]] = []
    for s in range(len(trains)):
        scores: dict[tuple[int, int], tuple[float, float]] = {}
        for c in range(len(cfgs)):
            for e in marks:
                wrong = []
                for j in range(k):
                    i = s * per_set + c * k + j
                    p = probs[i * len(marks) + marks.index(e)]
                    wrong.append((p >= cfg.threshold) != (bags.labels[tests[i]] == 1))
                w = np.concatenate(wrong).astype(float)
                scores[(c, e)] = (float(w.mean()), float(np.sqrt(w.mean() * (1 - w.mean()) / len(w))))
        c, e = pick_one_se(scores, key=lambda ce: complexity(replace(cfgs[ce[0]], epochs=ce[1])))
        info: dict[str, Any] = {"chosen": {**points[c], "epochs": e}} if grid else {}
        info.update(epochs=e, inner_error=round(scores[(c, e)][0], 4), inner_se=round(scores[(c, e)][1], 4))
        picks.append((c, e, info))
    if cfg.bagging:   # each chosen candidate's k inner networks, no refit
        return [(bagged([snaps[s * per_set + c * k + j][e] for j in range(k)],
                        empty_ensemble(bags.subset(np.asarray(tr)), cfg), replace(cfgs[c], epochs=e)), info)
                for s, (tr, (c, e, info)) in enumerate(zip(trains, picks))]
    refits = [Job(np.asarray(tr), sd, replace(cfgs[c], epochs=e)) for tr, sd, (c, e, _) in zip(trains, seeds, picks)]
    final = fit_jobs(bags, refits, device=device, progress=progress)
    return [(f[j.cfg.epochs], info) for f, j, (_, _, info) in zip(final, refits, picks)]
