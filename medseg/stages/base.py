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

import difflib
import inspect
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


def register_stage(name: str, *, accepts_of: Callable[[], Callable[..., Any]] | None = None):
    """Decorator: register a stage function under ``name`` (the YAML ``stage:`` key).

    ``accepts_of``: for a stage taking ``**params``, a function returning the callable (function or
    dataclass) whose keyword parameters those are (imported only when asked), so that
    :func:`check_stage_params` can check them before any stage runs."""
    reg = STAGES.register(name)

    def deco(fn):
        if accepts_of is not None:
            fn.accepts_of = accepts_of
        return reg(fn)

    return deco


def _keywords(fn: Callable[..., Any], skip: int) -> tuple[list[str], list[str], bool]:
    """(names accepted, names required, takes **kwargs) of ``fn``'s parameters after the first ``skip``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in ok]
    required = [p.name for p in params if p.kind in ok and p.default is inspect.Parameter.empty]
    return names, required, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def check_stage_params(stage: str, name: str, params: dict[str, Any]) -> None:
    """ConfigError naming the stage and the key when ``params`` do not fit the stage's signature
    (an unknown key, with the closest known one; a required one missing). Runs nothing."""
    fn = STAGES.get(stage)
    names, required, var = _keywords(fn, 1)               # after ctx
    target = getattr(fn, "accepts", None)
    if target is None and getattr(fn, "accepts_of", None) is not None:
        target = fn.accepts_of()  # type: ignore[attr-defined]
    if var and target is not None:
        more, req, var = _keywords(target, 0 if inspect.isclass(target) else 1)   # a volume function: after vol
        names, required = names + more, required + req
    if not var:
        unknown = [k for k in params if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.6)
                hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise ConfigError(f"stage '{name}' ({stage}): unknown parameter{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(hints)}; it takes {', '.join(names) or 'no parameters'}",
                              code="bad_params")
    missing = [k for k in required if k not in params]
    if missing:
        raise ConfigError(f"stage '{name}' ({stage}): missing parameter(s) {', '.join(missing)}", code="bad_params")


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

    stage.accepts = fn    # type: ignore[attr-defined]   # its keywords are the stage's params
    stage.__name__ = f"stage_{name}"
    stage.__doc__ = f"Pipeline stage applying {fn.__name__} to every volume.\n\n{fn.__doc__ or ''}"
    return register_stage(name)(stage)

