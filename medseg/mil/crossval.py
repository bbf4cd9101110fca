"""Repeated stratified k-fold cross-validation of MIL aggregators: per-fold metrics, their mean,
spread and Student-t interval, and pooled out-of-fold AUC per repeat.

Each outer fold trains on its training bags only (:func:`medseg.mil.fit.fit_mil`, or the inner-CV
epoch choice of :func:`medseg.mil.select.fit_mil_selected`, or all folds of all repeats side by side
with :func:`medseg.mil.folds.fit_jobs`) and predicts its test bags.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.metrics.classification import binary_metrics, t_interval
from medseg.mil.bags import Bags
from medseg.mil.fit import MILTrainConfig, averaged, predict_bags, snapshot_marks, stratified_folds
from medseg.mil.folds import STACK_LIMIT_BYTES, Job, fit_jobs, predict_jobs, stack_bytes, structure_key
from medseg.mil.grid import grid_points, select_and_fit
from medseg.mil.instances import instance_auc
from medseg.mil.select import fit_mil_selected

log = logging.getLogger("medseg.training.mil")


Progress = Callable[[float, int, float], None]  # (units done, units in all, seconds so far)


def cv_splits(labels: np.ndarray, folds: int, repeats: int, seed: int
              ) -> list[tuple[list[np.ndarray], list[np.ndarray], list[int]]]:
    """Per repeat: the test bags of each fold (stratified, reshuffled per repeat), the training bags of
    each fold and each fold's training seed; the splits and seeds of :func:`cross_validate`."""
    out = []
    for r in range(repeats):
        tests = stratified_folds(labels, folds, np.random.default_rng(seed + 7919 * r))
        out.append((tests, [np.setdiff1d(np.arange(len(labels)), t) for t in tests],
                    [seed + 100 * r + f for f in range(folds)]))
    return out


def cross_validate(bags: Bags, cfg: MILTrainConfig, *, folds: int = 10, repeats: int = 1, seed: int = 0,
                   device: torch.device | str = "cpu", parallel_folds: bool | None = None,
                   on_repeat: Callable[[dict[str, Any]], None] | None = None,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Repeated stratified k-fold CV; per-fold metrics plus mean, std and t-interval over folds.
    ``on_repeat`` gets the summary of the repeats done so far after each one (partial results);
    ``progress`` gets the work done so far (epochs of stacked training, or folds one by one).

    With ``parallel_folds`` (the default when ``batch_bags == 1`` and the padded bags fit in
    :data:`~medseg.mil.folds.STACK_LIMIT_BYTES`) the folds of all repeats train
    side by side as one stacked network (:func:`medseg.mil.folds.fit_jobs`: the same seeds, bag
    orders and updates as one by one) and their test bags are evaluated the same way. Otherwise
    (or with ``cfg.select_epochs``, the inner-CV epoch choice of :mod:`medseg.mil.select`) each fold
    trains on its own; the choice per fold is in ``per_fold[i]["epochs"]``."""
    per_fold: list[dict[str, Any]] = []
    oof = np.full((repeats, len(bags)), np.nan)
    t0 = time.perf_counter()
    if parallel_folds is None:  # side by side unless the padded bags would not fit in memory
        parallel_folds = stack_bytes(bags, folds * repeats * cfg.ensemble) <= STACK_LIMIT_BYTES
        if not parallel_folds:
            log.info("bags too long to train %d folds side by side; training them one by one", folds * repeats)
    parallel = parallel_folds and cfg.batch_bags == 1 and not cfg.select_epochs
    if (cfg.select_grid or cfg.bagging) and not parallel:
        raise ConfigError("mil: select_grid and bagging train side by side (batch_bags 1, parallel folds, "
                          "no select_epochs)")
    head = {"n_bags": len(bags), "n_positive": int(bags.labels.sum()), "folds": folds, "seed": seed,
            "config": asdict(cfg), "parallel_folds": parallel}
    splits = cv_splits(bags.labels, folds, repeats, seed)
    # instance labels that say more than the bag label (.mat files often repeat the bag label)
    informative = bags.instance_labels is not None and any(
        y == 1 and np.min(inst) == 0 for y, inst in zip(bags.labels, bags.instance_labels))
    done = [0.0]
    total = cfg.epochs if parallel else repeats * folds
    if cfg.select_grid or cfg.bagging:  # epochs of the inner stacks, then about as many for the refits (if any)
        marks = cfg.select_grid.get("epochs", [cfg.epochs])
        stacks = len({structure_key(replace(cfg, **p)) for p in grid_points(cfg.select_grid)})
        total = (1 if cfg.bagging else 2) * max(marks) * stacks

    def tick(n: float) -> None:   # shares of an epoch add up to whole ones (rounded to 1e-9)
        done[0] = round(done[0] + n, 9)
        if progress is not None:
            progress(done[0], total, time.perf_counter() - t0)

    if parallel:
        all_trains = [tr for _, trains, _ in splits for tr in trains]
        all_seeds = [sd for _, _, seeds in splits for sd in seeds]
        if cfg.select_grid or cfg.bagging:  # chosen / bagged on each outer training set's bags only
            picked = select_and_fit(bags, all_trains, all_seeds, cfg, cfg.select_grid, device=device, progress=tick)
            fitted, infos = [p[0] for p in picked], [p[1] for p in picked]
        else:
            jobs = [Job(tr, sd, cfg, tuple(snapshot_marks(cfg))) for tr, sd in zip(all_trains, all_seeds)]
            fitted = [averaged(snaps, cfg) for snaps in fit_jobs(bags, jobs, device=device, progress=tick)]
            infos = [{"epochs": cfg.epochs} for _ in jobs]
        probs = predict_jobs(bags, fitted, [t for tests, _, _ in splits for t in tests], device=device)
    for r, (tests, trains, seeds) in enumerate(splits):
        for f, test in enumerate(tests):
            if parallel:
                ens, prob, chosen = fitted[r * folds + f], probs[r * folds + f], infos[r * folds + f]
            else:  # epochs chosen by inner CV on this fold's training bags when configured
                ens, chosen = fit_mil_selected(bags.subset(trains[f]), cfg, seed=seeds[f], device=device)
                prob = predict_bags(ens, bags.subset(test))
                tick(1)
            oof[r, test] = prob
            m = binary_metrics(bags.labels[test], prob, threshold=cfg.threshold)
            if informative:  # does the attention find the positive instances?
                m["instance_auc"] = instance_auc(ens, bags.subset(test))
            per_fold.append({"repeat": r, "fold": f, "n_test": int(len(test)), **m, **chosen})
        log.debug("repeat %d/%d done (%.1f s)", r + 1, repeats, time.perf_counter() - t0)
        if on_repeat is not None and r + 1 < repeats:
            on_repeat(_summarise(head, per_fold, oof[:r + 1], bags.labels, cfg.threshold, t0))
    return _summarise(head, per_fold, oof, bags.labels, cfg.threshold, t0)


def _summarise(head, per_fold, oof, labels, threshold, t0) -> dict[str, Any]:
    repeats = oof.shape[0]
    summary: dict[str, Any] = {**head, "repeats": repeats,
                               "ci": "two-sided 95% Student-t interval of the mean over all folds, "
                                     "clipped to [0, 1]"}
    keys = ["accuracy", "auc", "balanced_accuracy", "f1"] + (["instance_auc"] if "instance_auc" in per_fold[0] else [])
    for key in keys:
        vals = [p[key] for p in per_fold]
        arr = np.asarray([v for v in vals if not np.isnan(v)])
        mean, lo, hi = t_interval(vals, bounds=(0.0, 1.0))   # every one of these metrics lies in [0, 1]
        summary[f"{key}_mean"] = mean
        summary[f"{key}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        summary[f"{key}_ci95"] = [lo, hi]
        # Spread of the per-repeat means (what Ilse et al. report as +- over 5 repeats).
        rep = [np.nanmean([p[key] for p in per_fold if p["repeat"] == r]) for r in range(repeats)]
        summary[f"{key}_repeat_means"] = [float(v) for v in rep]
    summary["pooled_auc_per_repeat"] = [binary_metrics(labels, oof[r], threshold=threshold)["auc"]
                                        for r in range(repeats)]
    chosen = [p["epochs"] for p in per_fold]
    summary["epochs_chosen"] = {str(e): chosen.count(e) for e in sorted(set(chosen))}
    if any("chosen" in p for p in per_fold):  # model selection: how often each configuration was chosen
        picks = [json.dumps(p["chosen"], sort_keys=True) for p in per_fold]
        summary["configs_chosen"] = {c: picks.count(c) for c in sorted(set(picks), key=lambda c: -picks.count(c))}
    summary["per_fold"] = per_fold
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
