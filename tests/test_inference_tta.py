"""Mirroring TTA and ensembles on hand-worked predictors."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import ConfigError
from medseg.inference import ensemble, mirror_tta, sliding_window
from medseg.inference.tta import mirror_subsets


def test_mirror_subsets():
    assert mirror_subsets(()) == [()]
    assert mirror_subsets((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    with pytest.raises(ConfigError):
        mirror_subsets((1, 1))


def _ramp_predictor(axis):
    """Logits (x + position along axis, -x): not mirror-equivariant along ``axis``."""
    def predict(x):
        shape = [1] * x.ndim
        shape[2 + axis] = x.shape[2 + axis]
        r = torch.arange(x.shape[2 + axis], dtype=torch.float32).reshape(shape)
        return torch.cat([x + r, -x], dim=1)
    return predict


def test_mirror_tta_by_hand():
    x = torch.randn(1, 1, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = mirror_tta(_ramp_predictor(1), x, axes=(1,))
    # flipping along axis 1, predicting and flipping back gives logits (x + (3 - y), -x)
    y = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4, 1)
    p_plain = torch.sigmoid((x + y) - (-x))  # two-class softmax = sigmoid of the logit difference
    p_flip = torch.sigmoid((x + (3 - y)) - (-x))
    expected0 = (p_plain + p_flip) / 2
    torch.testing.assert_close(out[:, :1], expected0)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 3, 4, 5))
    # mirroring along an axis the predictor is equivariant to changes nothing
    torch.testing.assert_close(mirror_tta(_ramp_predictor(1), x, axes=(0, 2)),
                               torch.softmax(_ramp_predictor(1)(x), 1))


def test_mirror_tta_with_sliding_window_and_sigmoid():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 20, 18, 22)
    out = mirror_tta(lambda t: sliding_window(net, t, 16), x, axes=(0, 1, 2), activation="sigmoid")
    assert out.shape == (1, 2, 20, 18, 22)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError, match="mirror axis"):
        mirror_tta(net, x, axes=(3,))


def test_ensemble_by_hand():
    x = torch.zeros(1, 1, 2, 2)
    p1 = lambda t: torch.zeros(1, 2, 2, 2)  # softmax 0.5 / 0.5
    p2 = lambda t: torch.stack([torch.full((1, 2, 2), math.log(3.0)), torch.zeros(1, 2, 2)], 1)  # 0.75 / 0.25
    out = ensemble([p1, p2], x)
    torch.testing.assert_close(out[0, 0], torch.full((2, 2), 0.625))
    out_w = ensemble([p1, p2], x, weights=[1, 3])
    torch.testing.assert_close(out_w[0, 0], torch.full((2, 2), 0.5 * 0.25 + 0.75 * 0.75))
    probs = ensemble([lambda t: torch.full((1, 2, 2, 2), 0.2), lambda t: torch.full((1, 2, 2, 2), 0.6)], x,
                     activation="none")
    torch.testing.assert_close(probs, torch.full((1, 2, 2, 2), 0.4))


def test_ensemble_errors():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ConfigError):
        ensemble([], x)
    with pytest.raises(ConfigError, match="weights"):
        ensemble([lambda t: t], x, weights=[-1])
    with pytest.raises(ConfigError, match="shape"):
        ensemble([lambda t: torch.zeros(1, 2, 2, 2), lambda t: torch.zeros(1, 3, 2, 2)], x)
