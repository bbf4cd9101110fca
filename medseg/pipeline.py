"""The pipeline runner.

A pipeline is a named list of stages, each a registered function with parameters from YAML::

    name: evaluate-demo
    output: out/demo                 # every stage writes inside this folder
    stages:
      - stage: evaluate              # registry key
        params: {pred: data_samples/hippocampus/pred, ref: data_samples/hippocampus/labels}

A config may instead say ``pipeline: NAME`` to take the stage list from ``pipelines/NAME.yaml``
and give per-stage parameters under ``params: {STAGE_NAME: {...}}``. ``medseg run CFG --set
key=value`` overrides any key; the resolved config is written to ``OUTPUT/config.resolved.yaml``.

The stages themselves live in :mod:`medseg.stages` (imported here, so every stage is registered
before a config is checked): a stage receives a :class:`~medseg.stages.base.Context` and its
params, and may return a dict that is stored under ``ctx.results[stage_name]`` for later stages.
This module is only the runner: it reads the config, checks it and calls the stages in order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medseg import config as cfgmod
from medseg.errors import ConfigError
from medseg.stages import STAGES, Context
from medseg.stages.base import check_stage_params

log = logging.getLogger("medseg.pipeline")


def _find_pipeline(name: str, config_path: Path | None) -> Path:
    safe = Path(name).name
    if safe != name or not safe:
        raise ConfigError(f"pipeline name '{name}' must be a plain name (no folders)", code="bad_pipeline")
    candidates = []
    if config_path is not None:
        for parent in [config_path.parent, *config_path.parents]:
            candidates.append(parent / "pipelines" / f"{safe}.yaml")
    candidates.append(Path.cwd() / "pipelines" / f"{safe}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"pipeline '{name}' not found (looked for pipelines/{safe}.yaml)", code="bad_pipeline")


def resolve_config(cfg: dict[str, Any], *, config_path: Path | None = None) -> dict[str, Any]:
    """Expand ``pipeline: NAME`` into an explicit ``stages`` list; validate the shape."""
    cfgmod.check_keys(cfg, {"name", "pipeline", "output", "stages", "params", "description"}, where="config")
    out = dict(cfg)
    if "pipeline" in cfg:
        if "stages" in cfg:
            raise ConfigError("config: give either 'pipeline' or 'stages', not both")
        pfile = _find_pipeline(str(cfg["pipeline"]), config_path)
        pdef = cfgmod.load_yaml(pfile)
        stages = pdef.get("stages")
        out.setdefault("name", pdef.get("name", cfg["pipeline"]))
    else:
        stages = cfg.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError("config: 'stages' must be a non-empty list")
    per_stage = cfg.get("params") or {}
    if not isinstance(per_stage, dict):
        raise ConfigError("config: 'params' must map stage names to parameter mappings")
    resolved = []
    names = set()
    for i, st in enumerate(stages):
        if isinstance(st, str):
            st = {"stage": st}
        if not isinstance(st, dict) or "stage" not in st:
            raise ConfigError(f"config: stages[{i}] needs a 'stage' key naming a registered stage")
        cfgmod.check_keys(st, {"stage", "name", "params"}, where=f"stages[{i}]")
        name = st.get("name", st["stage"])
        if name in names:
            raise ConfigError(f"config: two stages are named '{name}'; give one a distinct 'name'")
        names.add(name)
        params = dict(st.get("params") or {})
        params.update(per_stage.get(name) or {})
        resolved.append({"stage": st["stage"], "name": name, "params": params})
    unknown = set(per_stage) - names
    if unknown:
        raise ConfigError(f"config: params given for unknown stage(s) {', '.join(sorted(unknown))}")
    out["stages"] = resolved
    out.pop("params", None)
    out.pop("pipeline", None)
    if not out.get("output"):
        raise ConfigError("config: 'output' (the output folder) is required")
    return out


def check_config(cfg: dict[str, Any], *, config_path: Path | None = None,
                 base_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """The resolved config and its output folder, after checking everything that can be checked before a
    stage runs: the shape of the config, every stage name, every stage's parameters against its signature
    (an unknown key such as ``nsd_tolerence_mm`` names the stage and the closest known key) and the
    output folder (not an existing file, writable). ConfigError otherwise; nothing is written."""
    from medseg.fsutil import check_output_dir

    resolved = resolve_config(cfg, config_path=config_path)
    for st in resolved["stages"]:
        check_stage_params(st["stage"], st["name"], st["params"])
    out_dir = Path(resolved["output"])
    out_dir = out_dir if out_dir.is_absolute() else (base_dir or Path.cwd()) / out_dir
    return resolved, check_output_dir(out_dir, "output")


def run_pipeline(
    cfg: dict[str, Any], *, config_path: Path | None = None, base_dir: Path | None = None
) -> Context:
    """Run every stage in order (after :func:`check_config`). Returns the context (with each stage's results)."""
    resolved, out_dir = check_config(cfg, config_path=config_path, base_dir=base_dir)
    base = base_dir or Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfgmod.save_yaml(resolved, out_dir / "config.resolved.yaml")
    ctx = Context(output_dir=out_dir.resolve(), config=resolved, base_dir=base)
    for st in resolved["stages"]:
        fn = STAGES.get(st["stage"])
        t0 = time.perf_counter()
        log.info("stage %s (%s) ...", st["name"], st["stage"])
        ctx.stage_name = st["name"]
        try:
            res = fn(ctx, **st["params"])
        except TypeError as exc:
            if "argument" in str(exc):
                raise ConfigError(f"stage '{st['name']}': {exc}", code="bad_params") from None
            raise
        ctx.results[st["name"]] = res if res is not None else {}
        log.info("stage %s done in %.2f s", st["name"], time.perf_counter() - t0)
    return ctx
