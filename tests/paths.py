"""Where the tests find the repository, its data samples and ../shared/data (one place, whatever the depth of
the test file: tests/<package>/test_x.py imports these instead of counting ``Path(__file__).parents``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSEG_SHARED", REPO.parent / "shared" / "data"))
SAMPLES = REPO / "data_samples"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs shared data: {p}")
    return p
