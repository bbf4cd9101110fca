"""Normalising user-facing evaluation parameters (CLI strings or YAML values).

Example
-------
>>> parse_labels("1,2")
[1, 2]
>>> parse_label_names("1=anterior,2=posterior", [1, 2])
{1: 'anterior', 2: 'posterior'}
>>> parse_tolerances([1.0, 2.0], [1, 2])
{1: 1.0, 2: 2.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medseg.errors import ConfigError


def _items(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, Sequence):
        out: list[str] = []
        for v in value:
            out.extend(_items(v))
        return out
    raise ConfigError(f"cannot read {value!r} as a list", code="bad_params")


def parse_names(value: Any) -> list[str]:
    """Names from "a,b" / ["a", "b"] (empty list for None)."""
    return _items(value)


def parse_labels(value: Any) -> list[int] | None:
    """``None`` (all labels found) or a list of distinct labels > 0 from "1,2" / [1, 2]."""
    items = _items(value)
    if not items:
        return None
    try:
        labels = [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"labels must be whole numbers > 0, got {value!r}", code="bad_labels") from None
    if any(k <= 0 for k in labels) or len(set(labels)) != len(labels):
        raise ConfigError(f"labels must be distinct whole numbers > 0, got {value!r}", code="bad_labels")
    return labels


def parse_label_names(value: Any, labels: Sequence[int] | None) -> dict[int, str]:
    """Names from {1: "liver"}, "1=liver,2=spleen", or names listed in the order of ``labels``."""
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, Mapping):
        try:
            return {int(k): str(v) for k, v in value.items()}
        except ValueError:
            raise ConfigError(f"label_names keys must be label numbers, got {value!r}", code="bad_params") from None
    items = _items(value)
    if all("=" in it or ":" in it for it in items):
        out = {}
        for it in items:
            k, _, name = it.replace(":", "=", 1).partition("=")
            try:
                out[int(k)] = name.strip()
            except ValueError:
                raise ConfigError(f"label name '{it}' should look like 1=liver", code="bad_params") from None
        return out
    if labels is None or len(labels) != len(items):
        raise ConfigError("label names without numbers need --labels with as many labels "
                          f"(got {len(items)} names), or write them as 1=liver,2=spleen", code="bad_params")
    return dict(zip(labels, items))


def parse_tolerances(value: Any, labels: Sequence[int] | None) -> float | dict[int, float]:
    """One tolerance (mm) for all labels, or one per label (needs ``labels`` in the same order)."""
    if isinstance(value, Mapping):
        out = {int(k): float(v) for k, v in value.items()}
    else:
        items = _items(value if value is not None else 1.0)
        try:
            vals = [float(v) for v in items]
        except ValueError:
            raise ConfigError(f"NSD tolerance must be numbers in mm, got {value!r}", code="bad_params") from None
        if len(vals) == 1:
            out = {0: vals[0]}
        elif labels is None or len(labels) != len(vals):
            raise ConfigError(f"{len(vals)} NSD tolerances need --labels with as many labels", code="bad_params")
        else:
            out = dict(zip(labels, vals))
    if any(not math.isfinite(v) or v < 0 for v in out.values()):
        raise ConfigError(f"NSD tolerances must be finite and >= 0 mm, got {value!r}", code="bad_params")
    if set(out) == {0}:
        return out[0]
    return out


def parse_pixel_spacing(value: Any) -> tuple[float, float] | None:
    """``None`` or the (row, column) spacing in mm of 2D masks from "0.5,0.5" / [0.5, 0.5] / "0.5"."""
    items = _items(value)
    if not items:
        return None
    try:
        vals = [float(v) for v in items]
    except ValueError:
        raise ConfigError(f"pixel spacing must be numbers in mm, got {value!r}", code="bad_params") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or any(not math.isfinite(v) or v <= 0 for v in vals):
        raise ConfigError(f"pixel spacing must be one or two positive numbers in mm (row,column), got {value!r}",
                          code="bad_params")
    return vals[0], vals[1]
