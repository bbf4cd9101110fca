"""One bundle from the folds of ``medseg train --plan ... --fold all``: ``RUN/bundle.yaml`` lists the
folds, whose weights stay in ``RUN/fold_F/model.safetensors``; ``medseg predict --model RUN``
predicts with the mean of the folds' probabilities (``--folds`` picks a subset)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.bundle import WEIGHTS, read_meta, write_meta
from medseg.errors import InputError

#: what must be equal in every fold for their probabilities to be averaged
_SAME = ("model", "labels", "channels", "plan", "patch_size", "slice_axis", "spacing_mm")


def _comparable(meta: dict, key: str):
    """``meta[key]`` as far as prediction depends on it: a plan's ``median_shape`` is a statistic of
    each fold's own training cases (folds differ by a voxel), not a preprocessing setting."""
    v = meta.get(key)
    return {k: x for k, x in v.items() if k != "median_shape"} if key == "plan" and isinstance(v, dict) else v


def trained_mirror_axes(flip: bool, slice_axis: int | None = None) -> list[int]:
    """The mirror axes a model was trained to be invariant to, which its bundle then mirrors by
    default at prediction (nnU-Net's rule: test-time mirroring on the axes mirrored in training).
    ``flip``: the training config's ``augment.flip`` (every axis); a 2D model (``slice_axis``) is not
    mirrored across slices, which would only reorder them.

    >>> trained_mirror_axes(True), trained_mirror_axes(True, slice_axis=0), trained_mirror_axes(False)
    ([0, 1, 2], [1, 2], [])
    """
    if not flip:
        return []
    return [a for a in (0, 1, 2) if a != slice_axis]


def fold_mirror_axes(fold_dir: str | Path) -> list[int]:
    """The ensemble mirrors at prediction on the axes its folds were mirrored on in training
    (``augment.flip`` of the fold's resolved config; :func:`trained_mirror_axes`)."""
    from medseg.config import load_yaml
    fold_dir = Path(fold_dir)
    resolved = fold_dir / "config.resolved.yaml"
    cfg = load_yaml(resolved) if resolved.is_file() else {}
    flip = bool(((cfg or {}).get("augment") or {}).get("flip", False))
    return trained_mirror_axes(flip, read_meta(fold_dir).get("slice_axis"))


def write_fold_ensemble(run_dir: str | Path, folds: Sequence[int], *, choose_postprocess: bool = True) -> Path:
    """Write ``run_dir/bundle.yaml`` for the fold bundles ``run_dir/fold_F``; InputError when a fold is
    missing its weights or was trained with another model, plan or labels.

    With ``choose_postprocess`` the folds' out-of-fold predictions decide the bundle's
    ``postprocess`` rules, and their pooled Dice before and after goes in ``crossval``
    (:func:`medseg.training.crossval.choose_run_postprocess`)."""
    run = Path(run_dir)
    metas = {}
    for f in folds:
        d = run / f"fold_{f}"
        if not (d / WEIGHTS["best"]).is_file():
            raise InputError(f"fold {f} has no trained weights yet", path=d, code="missing")
        metas[f] = read_meta(d)
    first = metas[folds[0]]
    for f, m in metas.items():
        diff = [k for k in _SAME if _comparable(m, k) != _comparable(first, k)]
        if diff:
            raise InputError(f"fold {f} differs from fold {folds[0]} in {', '.join(diff)}: the folds cannot be "
                             "averaged", path=run / f"fold_{f}", code="bad_bundle")
    meta = {k: v for k, v in first.items() if k not in ("format", "training", "data")}
    meta["folds"] = [int(f) for f in folds]
    guards = [m.get("input_guard") for m in metas.values()]
    if all(guards):   # the folds together saw every training case: their ranges combined
        from medseg.preprocess.guard import merge_guards

        meta["input_guard"] = merge_guards([g for g in guards if g])
    d0 = first.get("data", {})
    meta["data"] = {"root": d0.get("root"), "num_folds": d0.get("num_folds"), "split_seed": d0.get("split_seed"),
                    "val_cases": {int(f): m.get("data", {}).get("val_cases", []) for f, m in metas.items()}}
    meta["training"] = {"folds": {int(f): m.get("training", {}) for f, m in metas.items()}}
    meta["inference"] = {"tta_axes": fold_mirror_axes(run / f"fold_{folds[0]}")}
    if choose_postprocess:
        from medseg.training.crossval import choose_run_postprocess

        labels = sorted(int(k) for k in (first.get("labels") or {}) if int(k) > 0)
        chosen = choose_run_postprocess(run, folds, labels)
        meta["postprocess"] = chosen["postprocess"]
        meta["crossval"] = chosen["oof"]
    return write_meta(run, meta)

