"""Helpers shared by the kill-and-resume tests (batch runner and ``medseg predict``)."""

from __future__ import annotations

import json
from pathlib import Path

from medseg.batch import MANIFEST


def cases_recorded(root: Path) -> int:
    """How many cases the manifest in ``root`` records (0 while it is missing or being replaced)."""
    try:
        return len(json.loads((root / MANIFEST).read_text())["cases"])
    except (OSError, ValueError, KeyError):
        return 0


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def output_bytes(root: Path) -> dict[str, bytes]:
    """:func:`tree_bytes` less ``timings.csv``, a log of the latest run (different every run, not an
    output); asserts that the run wrote it."""
    tree = tree_bytes(root)
    assert tree.pop("timings.csv", None) is not None, f"no timings.csv in {root}"
    return tree
