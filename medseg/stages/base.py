"""What every pipeline stage shares: the registry, the :class:`Context` and the per-volume helpers.

A stage is a function ``fn(ctx, **params) -> dict | None`` registered under a name with
:func:`register_stage`; the YAML key ``stage:`` names it and ``params:`` become its keyword
arguments. What it returns is stored under ``ctx.results[stage_name]`` for later stages (keys
starting with ``_`` are hand-overs between stages, not shown to the user). Per-volume stages
(preprocessing) are made with :func:`volume_stage`, which maps a plain ``fn(volume, **params) ->
volume`` over every case of an input folder.

This module sits below the stage modules (:mod:`medseg.stages.preprocess` ...) and the runner
(:mod:`medseg.pipeline`); it imports nothing of theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medseg.errors import ConfigError, MedsegError, status_of
from medseg.fsutil import safe_join
from medseg.registry import Registry

log = logging.getLogger("medseg.pipeline")

STAGES = Registry("stage")


def register_stage(name: str):
    """Decorator: register a stage function under ``name`` (the YAML ``stage:`` key)."""
    return STAGES.register(name)


@dataclass
class Context:
    """What a stage sees: the output folder, the resolved config and the earlier stages' results."""

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


# ---------------------------------------------------------------------------- volume stages
def map_volumes(ctx: Context, fn: Callable[[Any], Any], *, input: str | None,
                kind: Literal["image", "label"] | None = None,
                default_name: str) -> dict[str, Any]:
    """Apply ``fn(volume) -> volume`` to every case of ``input`` (default: the previous volume
    stage's output) and write ``OUTPUT/<stage name>/<case>.nii.gz``. A bad case is reported in
    ``failed`` and the others go on; the output folder becomes the next stage's default input."""
    from medseg.fsutil import case_names, output_lock
    from medseg.io import list_cases, read_volume, write_volume

    src = ctx.resolve_input(input) if input else ctx.results.get("_last_volume_dir")
    if src is None:
        raise ConfigError(f"stage '{ctx.stage_name or default_name}': give 'input' (a file or folder of volumes)",
                          code="bad_params")
    out_dir = ctx.out(ctx.stage_name or default_name)
    done, failed = [], {}
    paths = list_cases(Path(src))
    with output_lock(out_dir):  # the lock every verb that writes a folder takes
        for path, cid in zip(paths, case_names(paths)):
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

