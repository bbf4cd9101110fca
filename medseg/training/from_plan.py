"""Training configs from a ``medseg plan`` file: one configuration, one fold (or every fold).

>>> cfg = config_from_plan(plan, "3d_fullres", fold=0, out_dir="runs/la")      # doctest: +SKIP
>>> cfg["output"]["dir"]                                                          # doctest: +SKIP
'runs/la/fold_0'

The plan's configuration gives the model (``unet`` with its features, strides and kernels), the
patch, spacing, normalisation and batch size; everything else keeps the training defaults
(:mod:`medseg.training.config`) and can be changed with ``--set``. A ``2d`` configuration trains
the 2D net on one-slice patches along the plan's ``slice_axis``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.preprocess.planner import PLAN_FORMAT


def check_plan(plan: Any, configuration: str) -> dict[str, Any]:
    """The named configuration of a plan dict; ConfigError naming what is missing."""
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"not a medseg plan (format {plan.get('format') if isinstance(plan, dict) else None!r}, "
                          f"expected {PLAN_FORMAT}); write one with medseg plan --dataset DIR")
    cfgs = plan.get("configurations")
    if not isinstance(cfgs, dict) or configuration not in cfgs:
        known = ", ".join(cfgs) if isinstance(cfgs, dict) else "none"
        raise ConfigError(f"the plan has no configuration '{configuration}' (it has: {known})")
    c = cfgs[configuration]
    for key in ("spacing_mm", "patch_size", "batch_size", "divisor", "model", "normalization"):
        if key not in c:
            raise ConfigError(f"plan configuration '{configuration}' lacks '{key}'")
    return c


def config_from_plan(plan: dict[str, Any], configuration: str, *, fold: int | str, out_dir: str | Path,
                     num_folds: int = 5, seed: int = 12345) -> dict[str, Any]:
    """A training config (not yet resolved) for ``fold`` of ``configuration``; output in ``out_dir/fold_F``."""
    c = check_plan(plan, configuration)
    model = dict(c["model"])
    spacing, patch = list(c["spacing_mm"]), [int(p) for p in c["patch_size"]]
    if len(patch) == 2:
        axis = int(c.get("slice_axis", 0))
        model["spatial_dims"] = 2
        patch.insert(axis, 1)
        full = list(plan["target_spacing_mm"])
        spacing = [float(full[axis]) if k == axis else spacing.pop(0) for k in range(3)]
    labels = {int(k): str(v) for k, v in plan.get("labels", {}).items() if int(k) != 0}
    t = c.get("training", {})
    return {
        "data": {"root": plan["dataset"]["root"], "fold": fold, "num_folds": num_folds, "seed": seed,
                 "labels": labels or None},
        "model": model,
        "plan": {"spacing_mm": spacing, "patch_size": patch, "normalization": c["normalization"],
                 "divisor": int(max(c["divisor"]))},
        "training": {"batch_size": int(c["batch_size"]), **{k: t[k] for k in ("epochs", "iters_per_epoch", "amp")
                                                             if k in t}},
        "output": {"dir": str(Path(out_dir) / f"fold_{fold}")},
    }
