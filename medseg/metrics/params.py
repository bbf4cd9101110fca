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
from pathlib import Path
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


def _check_names(out: dict[int, str], value: Any) -> dict[int, str]:
    """Strict label names: labels >= 0, names non-empty, no name given twice."""
    for k, name in out.items():
        if k < 0:
            raise ConfigError(f"label names: label {k} must be >= 0 (in {value!r})", code="bad_params")
        if not name:
            raise ConfigError(f"label names: label {k} has an empty name (in {value!r})", code="bad_params")
    seen: dict[str, int] = {}
    for k, name in out.items():
        if name in seen:
            raise ConfigError(f"label names: labels {seen[name]} and {k} are both named '{name}'", code="bad_params")
        seen[name] = k
    return out


def _names_from_file(path: Path) -> dict[int, str]:
    """Label names from a dataset.json (its ``labels``, MSD or nnU-Net v2 style) or a text file of ``N=NAME``
    lines (or one comma-separated line; ``#`` starts a comment)."""
    if path.suffix.lower() == ".json":
        import json

        from medseg.io.dataset import labels_from_json

        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"label names: cannot read {path}: {exc}", code="bad_params") from None
        names = labels_from_json(meta, path) if isinstance(meta, dict) else None
        if not names:
            raise ConfigError(f"label names: {path} has no 'labels' mapping", code="bad_params")
        return {k: v for k, v in names.items() if k != 0}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"label names: cannot read {path}: {exc}", code="bad_params") from None
    items = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    return parse_label_names(",".join(i for i in items if i), None)


def parse_label_names(value: Any, labels: Sequence[int] | None) -> dict[int, str]:
    """Names from {1: "liver"}, "1=liver,2=spleen", names listed in the order of ``labels``, or a file
    (a dataset.json, or a text file of ``1=liver`` lines). Strict: pairs are separated by commas
    (``"1=a 2=b"`` is refused, not read as one name), names are non-empty and distinct, a label is named once.

    >>> parse_label_names("1=anterior 2=posterior", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medseg.errors.ConfigError: label names: ... separate the pairs with commas: 1=anterior,2=posterior
    """
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, Path) or (isinstance(value, str) and "=" not in value and ":" not in value
                                   and Path(value).is_file()):
        return _check_names(_names_from_file(Path(value)), value)
    if isinstance(value, Mapping):
        try:
            out = {int(k): str(v).strip() for k, v in value.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"label_names keys must be label numbers, got {value!r}", code="bad_params") from None
        return _check_names(out, value)
    items = _items(value)
    if any("=" in it or ":" in it for it in items):
        out = {}
        for it in items:
            k, sep, name = it.replace(":", "=", 1).partition("=")
            if not sep:
                raise ConfigError(f"label names: '{it}' has no number; write every name as N=NAME, e.g. 1=liver",
                                  code="bad_params")
            if "=" in name:
                fixed = ",".join(p.strip() for p in it.split())
                raise ConfigError(f"label names: '{it}' holds several '='; separate the pairs with commas: {fixed}",
                                  code="bad_params")
            try:
                key = int(k)
            except ValueError:
                raise ConfigError(f"label name '{it}' should look like 1=liver", code="bad_params") from None
            if key in out:
                raise ConfigError(f"label names: label {key} is named twice ('{out[key]}' and '{name.strip()}')",
                                  code="bad_params")
            out[key] = name.strip()
        return _check_names(out, value)
    if labels is None or len(labels) != len(items):
        raise ConfigError("label names without numbers need --labels with as many labels "
                          f"(got {len(items)} names), or write them as 1=liver,2=spleen", code="bad_params")
    return _check_names(dict(zip(labels, items)), value)


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
