"""Stages and the runner.

A pipeline is a named list of stages, each a registered function with parameters from YAML::

    name: evaluate-demo
    output: out/demo                 # every stage writes inside this folder
    stages:
      - stage: evaluate              # registry key
        params: {pred: data_samples/hippocampus/pred, ref: data_samples/hippocampus/labels}

A config may instead say ``pipeline: NAME`` to take the stage list from ``pipelines/NAME.yaml``
and give per-stage parameters under ``params: {STAGE_NAME: {...}}``. ``medseg run CFG --set
key=value`` overrides any key; the resolved config is written to ``OUTPUT/config.resolved.yaml``.

Stages register with :func:`register_stage`; a stage receives a :class:`Context` and its params,
and may return a dict that is stored under ``ctx.results[stage_name]`` for later stages.
Per-volume stages (preprocessing) are made with :func:`volume_stage`, which maps a plain
``fn(volume, **params) -> volume`` over every case of an input folder.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medseg import config as cfgmod
from medseg.errors import ConfigError, MedsegError, status_of
from medseg.fsutil import safe_join
from medseg.registry import Registry

log = logging.getLogger("medseg.pipeline")

STAGES = Registry("stage")

# Modules whose import registers stages. Later layers (train, predict, wsi) append here.
STAGE_MODULES = [
    "medseg.preprocess.stages",
    "medseg.metrics.stage",
    "medseg.inference.stage",
    "medseg.wsi.stages",
]


def register_stage(name: str):
    return STAGES.register(name)


@dataclass
class Context:
    output_dir: Path
    config: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    stage_name: str = ""

    def out(self, *parts: str) -> Path:
        """A path inside the output folder (refuses escapes)."""
        return safe_join(self.output_dir, *parts)

    def resolve_input(self, p: str | Path) -> Path:
        """Input paths are relative to the working directory (where ``medseg run`` was started)."""
        path = Path(p)
        return path if path.is_absolute() else (self.base_dir / path)


def load_stage_modules() -> None:
    for mod in STAGE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # optional layers (e.g. wsi extras) may be absent
            if exc.name and mod.startswith(exc.name):
                continue
            raise


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


def run_pipeline(
    cfg: dict[str, Any], *, config_path: Path | None = None, base_dir: Path | None = None
) -> Context:
    """Run every stage in order. Returns the context (with each stage's results)."""
    load_stage_modules()
    resolved = resolve_config(cfg, config_path=config_path)
    for st in resolved["stages"]:
        STAGES.get(st["stage"])  # fail early on unknown stage names
    base = base_dir or Path.cwd()
    out_dir = Path(resolved["output"])
    out_dir = out_dir if out_dir.is_absolute() else base / out_dir
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


# ---------------------------------------------------------------------------- volume stages
def map_volumes(ctx: Context, fn: Callable[[Any], Any], *, input: str | None, kind: str | None = None,
                default_name: str) -> dict[str, Any]:
    """Apply ``fn(volume) -> volume`` to every case of ``input`` (default: the previous volume
    stage's output) and write ``OUTPUT/<stage name>/<case>.nii.gz``. A bad case is reported in
    ``failed`` and the others go on; the output folder becomes the next stage's default input."""
    from medseg.io import list_cases, read_volume, write_volume

    src = ctx.resolve_input(input) if input else ctx.results.get("_last_volume_dir")
    if src is None:
        raise ConfigError(f"stage '{ctx.stage_name or default_name}': give 'input' (a file or folder of volumes)",
                          code="bad_params")
    out_dir = ctx.out(ctx.stage_name or default_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, failed = [], {}
    for path in list_cases(Path(src)):
        cid = _cid(path)
        try:
            write_volume(fn(read_volume(path, kind=kind)), out_dir / f"{cid}.nii.gz")
            done.append(cid)
        except MedsegError as exc:
            log.error("%s", exc)
            failed[cid] = status_of(exc)
    ctx.results["_last_volume_dir"] = out_dir
    return {"output": str(out_dir), "done": done, "failed": failed}


def volume_stage(name: str, fn: Callable[..., Any], *, label_aware: bool = True) -> Callable[..., Any]:
    """Register a stage that applies ``fn(volume, **params)`` to every case of ``input``.

    Stage params: ``input`` (file or folder; default: the previous volume stage's output folder),
    plus ``fn``'s own. Writes ``OUTPUT/<stage name>/<case>.nii.gz``; a bad case is reported and
    the others go on.
    """

    def stage(ctx: Context, input: str | None = None, **params: Any) -> dict[str, Any]:
        return map_volumes(ctx, lambda vol: fn(vol, **params), input=input, default_name=name)

    stage.__name__ = f"stage_{name}"
    stage.__doc__ = f"Pipeline stage applying {fn.__name__} to every volume.\n\n{fn.__doc__ or ''}"
    return register_stage(name)(stage)


def _cid(path: Path) -> str:
    from medseg.fsutil import case_id, sanitize_name

    return sanitize_name(case_id(path))
