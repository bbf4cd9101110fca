"""Shared test fixtures. Tests that need ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSEG_SHARED", REPO.parent / "shared" / "data"))
SAMPLES = REPO / "data_samples"


try:  # the suite runs as 2 xdist workers on 2 cores: one intra-op thread each avoids oversubscription
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when it is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs shared data: {p}")
    return p


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
