"""Shared test fixtures. Tests that need ../shared/data skip cleanly when it is absent (tests.paths.shared_path)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.paths import shared_path  # REPO, SAMPLES, SHARED and shared_path live in tests/paths.py

try:  # the suite runs as 2 xdist workers on 2 cores: one intra-op thread each avoids oversubscription
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
