"""Per-label post-processing rules: apply them to label maps, and choose them on validation cases.

A rule set is a plain, JSON-friendly dict from a label (int, or its string form as JSON keys are)
or ``"foreground"`` (all labels > 0 as one mask) to a list of operations applied in order::

    {"foreground": [{"op": "keep_largest"}],
     1: [{"op": "remove_small", "min_volume_mm3": 50.0}, {"op": "fill_holes"}],
     2: [{"op": "closing", "radius_mm": 2.0}]}

Operations: ``keep_largest``, ``remove_small`` (``min_volume_mm3``), ``fill_holes`` (optional
``slice_axis``), ``opening`` and ``closing`` (``radius_mm``); ``connectivity`` is accepted by the
component operations. ``"foreground"`` first, then labels in increasing order. Voxels an
operation removes become background (0); voxels it adds are taken only from background, never
from another label (a hole filled around a tumour label keeps the tumour).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.metrics.overlap import mask_dice as dice  # medseg.postprocess.dice: Dice of two boolean masks
from medseg.postprocess.components import fill_holes, keep_largest_component, remove_small_components
from medseg.postprocess.morphology import binary_closing, binary_opening

log = logging.getLogger(__name__)

Op = dict[str, Any]
_REMOVING = {"keep_largest", "remove_small", "opening"}
_PARAMS = {
    "keep_largest": ({"connectivity"}, set()),
    "remove_small": ({"connectivity"}, {"min_volume_mm3"}),
    "fill_holes": ({"slice_axis"}, set()),
    "opening": (set(), {"radius_mm"}),
    "closing": (set(), {"radius_mm"}),
}


def _check_op(op: Op, key) -> None:
    name = op.get("op") if isinstance(op, dict) else None
    if name not in _PARAMS:
        raise ConfigError(f"post-processing rule for {key!r}: {op!r} is not an operation; use {{'op': one of "
                          f"{sorted(_PARAMS)}, ...}}")
    optional, required = _PARAMS[name]
    keys = set(op) - {"op"}
    if not required <= keys or not keys <= optional | required:
        raise ConfigError(f"post-processing rule for {key!r}: '{name}' needs {sorted(required)} and accepts "
                          f"{sorted(optional)}, got {sorted(keys)}")
    if key == "foreground" and name not in _REMOVING:
        raise ConfigError(f"post-processing rule 'foreground': '{name}' would add voxels without a label; "
                          f"use it per label")


def apply_op(mask: np.ndarray, op: Op, spacing_mm: Sequence[float]) -> np.ndarray:
    """Apply one operation dict to a boolean mask."""
    name = op["op"]
    if name == "keep_largest":
        return keep_largest_component(mask, connectivity=op.get("connectivity", 1))
    if name == "remove_small":
        return remove_small_components(mask, min_volume_mm3=float(op["min_volume_mm3"]), spacing_mm=spacing_mm,
                                       connectivity=op.get("connectivity", 1))
    if name == "fill_holes":
        return fill_holes(mask, slice_axis=op.get("slice_axis"))
    if name == "opening":
        return binary_opening(mask, radius_mm=float(op["radius_mm"]), spacing_mm=spacing_mm)
    if name == "closing":
        return binary_closing(mask, radius_mm=float(op["radius_mm"]), spacing_mm=spacing_mm)
    raise ConfigError(f"unknown post-processing operation {name!r}")


def _normalise_key(key) -> int | str:
    if key == "foreground":
        return key
    try:
        k = int(key)
    except (TypeError, ValueError):
        raise ConfigError(f"post-processing rule key {key!r} must be a label number or 'foreground'") from None
    if k <= 0:
        raise ConfigError(f"post-processing rule key {key!r}: labels are positive (0 is background)")
    return k


def _ordered(rules: dict) -> list[tuple[int | str, list[Op]]]:
    items = {}
    for key, ops in rules.items():
        k = _normalise_key(key)
        if not isinstance(ops, (list, tuple)):
            raise ConfigError(f"post-processing rule for {key!r} must be a list of operations, got {ops!r}")
        for op in ops:
            _check_op(op, k)
        items[k] = list(ops)
    order = sorted(items, key=lambda k: (k != "foreground", k if k != "foreground" else 0))
    return [(k, items[k]) for k in order]


def apply_postprocess(label_map: np.ndarray, spacing_mm: Sequence[float], rules: dict, *,
                      inplace: bool = False) -> np.ndarray:
    """Apply per-label rules to an integer label map ``(z, y, x)``; returns a new array, same dtype
    (``inplace``: ``label_map`` itself, changed; no second label map on a CT-sized grid).

    Examples
    --------
    >>> lm = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [2, 0, 2, 2]])
    >>> apply_postprocess(lm, (1.0, 1.0), {1: [{"op": "keep_largest"}]}).tolist()
    [[1, 1, 0, 0], [0, 0, 0, 0], [2, 0, 2, 2]]
    """
    out = label_map if inplace else np.array(label_map, copy=True)
    if len(spacing_mm) != out.ndim:
        raise ConfigError(f"spacing_mm {tuple(spacing_mm)} must have one value per axis of the label map {out.shape}")
    for key, ops in _ordered(rules):
        mask = out > 0 if key == "foreground" else out == key
        new = mask
        for op in ops:
            new = apply_op(new, op, spacing_mm)
        # only fill_holes / closing add voxels; the others keep a subset of the mask
        added = new & ~mask if any(op["op"] not in _REMOVING for op in ops) else None
        out[np.greater(mask, new, out=mask)] = 0     # mask & ~new, written over the mask
        del new, mask
        if added is not None:
            added &= out == 0
            out[added] = key
    return out


def mean_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], label: int) -> float:
    """Mean over cases of the Dice of ``label`` (a case where both are empty counts 1)."""
    return float(np.mean([dice(p == label, r == label) for p, r in zip(preds, refs)]))


def choose_postprocess(
    preds: Sequence[np.ndarray],
    refs: Sequence[np.ndarray],
    spacing_mm: Sequence[float] | Sequence[Sequence[float]],
    candidates: dict | Sequence[Op],
    *,
    labels: Sequence[int] | None = None,
    min_improvement: float = 0.0,
) -> dict:
    """Pick, on validation cases, the post-processing operations that raise mean Dice (as nnU-Net).

    For ``"foreground"`` (if a candidate) then each label in turn, the candidate operations are
    tried one by one on top of those already kept; an operation is kept only if the mean Dice over
    the cases (for ``"foreground"``: the mean over labels of the per-label mean Dice) goes up by
    more than ``min_improvement``. Operations on one label leave the other labels' voxels alone,
    so the choices do not interact.

    Parameters
    ----------
    preds, refs : sequences of integer label maps, one pair per validation case (same shapes).
    spacing_mm : one spacing for all cases, or one per case.
    candidates : dict or list
        ``{label or "foreground": [op, ...]}``, or a list of ops tried for every label.
    labels : labels to consider; default every label > 0 found in ``refs`` or ``preds``.

    Returns
    -------
    dict
        The chosen rules (only keys with at least one operation), ready for
        :func:`apply_postprocess` and for storing in a model bundle as JSON.
    """
    if len(preds) != len(refs) or len(preds) == 0:
        raise ConfigError(f"choose_postprocess needs as many predictions as references (>0), got {len(preds)} "
                          f"and {len(refs)}")
    for i, (p, r) in enumerate(zip(preds, refs)):
        if np.shape(p) != np.shape(r):
            raise ConfigError(f"validation case {i}: prediction shape {np.shape(p)} != reference {np.shape(r)}")
    per_case = isinstance(spacing_mm[0], (list, tuple, np.ndarray))
    spacings = list(spacing_mm) if per_case else [tuple(spacing_mm)] * len(preds)
    if labels is None:
        found: set[int] = set()
        for arr in list(preds) + list(refs):
            found.update(int(v) for v in np.unique(arr))
        labels = sorted(v for v in found if v > 0)
    if isinstance(candidates, dict):
        cand = {_normalise_key(k): list(v) for k, v in candidates.items()}
    else:
        cand = {k: list(candidates) for k in labels}
    keys = [k for k, _ in _ordered(cand)]

    def score(key, maps):
        if key == "foreground":
            return float(np.mean([mean_dice(maps, refs, k) for k in labels])) if labels else 1.0
        return mean_dice(maps, refs, key)

    current = [np.asarray(p) for p in preds]
    chosen: dict = {}
    for key in keys:
        best = score(key, current)
        for op in cand[key]:
            trial = [apply_postprocess(p, sp, {key: [op]}) for p, sp in zip(current, spacings)]
            s = score(key, trial)
            log.info("postprocess %s %s: mean Dice %.4f -> %.4f", key, op, best, s)
            if s > best + min_improvement:
                chosen.setdefault(key, []).append(dict(op))
                current, best = trial, s
    return chosen
