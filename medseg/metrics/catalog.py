"""The metrics ``medseg evaluate --metrics`` can select: names, columns, kinds and formulas.

Names (``--metrics dice,assd,hd100``; ``all`` selects every fixed one; default
``dice,iou,hd95,nsd``):

============================  =========================  =================================================
name                          column                     definition (R reference, P prediction)
============================  =========================  =================================================
``dice``                      ``dice``                   ``2|R∩P| / (|R| + |P|)``
``iou``                       ``iou``                    ``|R∩P| / |R∪P|``
``hd95``, ``hd100``, ``hdP``  ``hdP_mm``                 symmetric P-th percentile Hausdorff distance
``nsd``                       ``nsd``                    surface Dice at the tolerance
``assd``                      ``assd_mm``                average symmetric surface distance
``msd_ref``                   ``msd_ref_to_pred_mm``     mean distance from the reference surface to P's
``msd_pred``                  ``msd_pred_to_ref_mm``     mean distance from the predicted surface to R's
``overlap_ref``               ``surface_overlap_ref``    share of R's surface within the tolerance of P's
``overlap_pred``              ``surface_overlap_pred``   share of P's surface within the tolerance of R's
``sensitivity``               ``sensitivity``            ``|R∩P| / |R|``
``specificity``               ``specificity``            ``TN / (TN + FP)`` over the whole image
``precision``                 ``precision``              ``|R∩P| / |P|``
``vol_ref``, ``vol_pred``     ``vol_ref_ml`` ...         volumes (ml; mm² for 2D masks)
``vol_diff``                  ``vol_diff_ml``            ``V_P - V_R``
``abs_vol_diff``              ``abs_vol_diff_ml``        ``|V_P - V_R|``
``rel_vol_diff``              ``rel_vol_diff``           ``(V_P - V_R) / V_R``
============================  =========================  =================================================

Example
-------
>>> parse_metrics("dice,hd100,assd")
['dice', 'hd100_mm', 'assd_mm']
>>> parse_metrics(None)
['dice', 'iou', 'hd95_mm', 'nsd']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from medseg.errors import ConfigError


@dataclass(frozen=True)
class MetricSpec:
    """One selectable metric.

    kind: ``overlap`` (in [0, 1], higher better; 1 when both masks are empty, 0 when one is, 0 for a
    failed case), ``distance`` (mm, lower better; 0 both empty, image diagonal one empty or failed),
    ``specificity`` (computed whenever defined; 0 for a failed case) or ``volume`` (computed from the
    voxel counts; a failed case counts as an empty prediction).
    """

    name: str
    column: str
    title: str
    kind: str
    higher_is_better: bool | None


_FIXED = [
    MetricSpec("dice", "dice", "Dice", "overlap", True),
    MetricSpec("iou", "iou", "IoU", "overlap", True),
    MetricSpec("hd95", "hd95_mm", "HD95 (mm)", "distance", False),
    MetricSpec("nsd", "nsd", "NSD", "overlap", True),
    MetricSpec("hd100", "hd100_mm", "HD (mm)", "distance", False),
    MetricSpec("assd", "assd_mm", "ASSD (mm)", "distance", False),
    MetricSpec("msd_ref", "msd_ref_to_pred_mm", "MSD ref→pred (mm)", "distance", False),
    MetricSpec("msd_pred", "msd_pred_to_ref_mm", "MSD pred→ref (mm)", "distance", False),
    MetricSpec("overlap_ref", "surface_overlap_ref", "surface overlap ref", "overlap", True),
    MetricSpec("overlap_pred", "surface_overlap_pred", "surface overlap pred", "overlap", True),
    MetricSpec("sensitivity", "sensitivity", "sensitivity", "overlap", True),
    MetricSpec("specificity", "specificity", "specificity", "specificity", True),
    MetricSpec("precision", "precision", "precision", "overlap", True),
    MetricSpec("vol_ref", "vol_ref_ml", "V ref (ml)", "volume", None),
    MetricSpec("vol_pred", "vol_pred_ml", "V pred (ml)", "volume", None),
    MetricSpec("vol_diff", "vol_diff_ml", "V pred - V ref (ml)", "volume", None),
    MetricSpec("abs_vol_diff", "abs_vol_diff_ml", "|V pred - V ref| (ml)", "volume", False),
    MetricSpec("rel_vol_diff", "rel_vol_diff", "(V pred - V ref) / V ref", "volume", None),
]
BY_NAME = {m.name: m for m in _FIXED}
BY_COLUMN = {m.column: m for m in _FIXED}
DEFAULT_METRICS = ("dice", "iou", "hd95_mm", "nsd")
_HD = re.compile(r"^hd(\d+(?:\.\d+)?)(?:_mm)?$")


def hd_percent(column: str) -> float | None:
    """The percentile of an ``hdP_mm`` column (``hd95_mm`` -> 95.0), else ``None``."""
    m = _HD.match(column)
    return float(m.group(1)) if m else None


def spec_of(column: str) -> MetricSpec:
    """The spec of a metric column (any ``hdP_mm`` is a distance)."""
    if column in BY_COLUMN:
        return BY_COLUMN[column]
    p = hd_percent(column)
    if p is not None:
        return MetricSpec(column[:-3], column, f"HD{_fmt(p)} (mm)", "distance", False)
    raise KeyError(column)


def _fmt(p: float) -> str:
    return str(int(p)) if p == int(p) else str(p)


def parse_metrics(value: Any) -> list[str]:
    """Metric columns from ``"dice,assd"`` / a list / ``"all"``; ``None`` gives the default set.

    Raises ConfigError naming the unknown metric and listing the known ones.
    """
    if value is None or value == "" or value == []:
        return list(DEFAULT_METRICS)
    items = value if isinstance(value, (list, tuple)) else str(value).replace(";", ",").split(",")
    out: list[str] = []
    for raw in items:
        name = str(raw).strip().lower()
        if not name:
            continue
        if name == "all":
            cols = [m.column for m in _FIXED]
        elif name in BY_NAME:
            cols = [BY_NAME[name].column]
        elif name in BY_COLUMN:
            cols = [name]
        elif (p := hd_percent(name)) is not None:
            if not 0.0 <= p <= 100.0 or not math.isfinite(p):
                raise ConfigError(f"Hausdorff percentile must lie in [0, 100], got '{raw}'", code="bad_params")
            cols = [f"hd{_fmt(p)}_mm"]
        else:
            known = ", ".join([m.name for m in _FIXED] + ["hdP (any percentile, e.g. hd99)", "all"])
            raise ConfigError(f"unknown metric '{raw}' (known: {known})", code="bad_params")
        out.extend(c for c in cols if c not in out)
    if not out:
        return list(DEFAULT_METRICS)
    return out
