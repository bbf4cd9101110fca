"""The folds of ``medseg train --fold all`` as independent jobs: one after another in this process
(``local``), or in parallel on a Ray cluster (``--executor ray``: one task per fold, one GPU each
when the cluster has GPUs, else ``cpus_per_fold`` CPUs each).

Either way each fold runs exactly :func:`medseg.training.train` on its own config and writes only
its own ``fold_F/`` folder, so the executor changes when the folds run, not what they produce. A
finished fold is skipped; an interrupted one continues with ``resume``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError
from medseg.executors import LOCAL, ExecutorSpec

log = logging.getLogger("medseg.train")


def finished(cfg: dict) -> bool:
    """Whether ``cfg``'s output folder holds a run that reached its last epoch."""
    from medseg.bundle import META_FILE, read_meta
    from medseg.training.config import resolve_config

    d = Path(cfg["output"]["dir"])
    if not (d / META_FILE).is_file():
        return False
    tr = read_meta(d).get("training", {})
    return int(tr.get("epochs_done", 0)) >= int(resolve_config(cfg)["training"]["epochs"])


def _train_one(cfg: dict, resume: bool) -> dict[str, Any]:
    """One fold; errors come back as data (``{"error": {"code", "message"}}``) so that a Ray task
    reports them the way a local run does."""
    from medseg.executors import error_of
    from medseg.training import train

    try:
        return train(cfg, resume=resume)
    except MedsegError as exc:   # a ConfigError stays one (exit code 2 in the CLI)
        return {"error": {**error_of(exc), "config": isinstance(exc, ConfigError)}, "bundle": cfg["output"]["dir"]}


def run_folds(cfgs: Sequence[dict], *, resume: bool, executor: ExecutorSpec = LOCAL,
              cpus_per_fold: int = 1) -> list[dict[str, Any]]:
    """Train every config not yet finished; returns one summary per config in order (``{"bundle",
    "skipped": "finished"}`` for the skipped ones). The first fold that failed raises its error."""
    todo = [c for c in cfgs if not (len(cfgs) > 1 and finished(c))]
    if executor.is_local:
        done = []
        for c in todo:
            r = _train_one(c, resume)
            _raise(r)
            done.append(r)
    else:
        done = _on_ray(todo, resume, executor, cpus_per_fold)
    by_dir = {str(c["output"]["dir"]): r for c, r in zip(todo, done)}
    return [by_dir.get(str(c["output"]["dir"]), {"bundle": str(c["output"]["dir"]), "skipped": "finished"})
            for c in cfgs]


def _raise(result: dict) -> None:
    err = result.get("error")
    if err:
        raise (ConfigError if err.get("config") else MedsegError)(err["message"], code=err["code"])


def _on_ray(todo: Sequence[dict], resume: bool, spec: ExecutorSpec, cpus_per_fold: int) -> list[dict]:
    from medseg.executors import require_ray
    from medseg.ray_runner import connect

    ray = require_ray()
    started = connect(spec)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        opts = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": int(cpus_per_fold)}
        task = ray.remote(max_retries=spec.max_retries, **opts)(_train_one)
        log.info("training %d fold(s) on Ray (%s per fold)", len(todo), opts)
        results = ray.get([task.remote(dict(c), resume) for c in todo])
    finally:
        if started:
            ray.shutdown()
    for r in results:
        _raise(r)
    return list(results)
