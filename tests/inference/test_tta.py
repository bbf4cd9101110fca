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
    def p1(t):
        return torch.zeros(1, 2, 2, 2)  # softmax 0.5 / 0.5

    def p2(t):
        return torch.stack([torch.full((1, 2, 2), math.log(3.0)), torch.zeros(1, 2, 2)], 1)  # 0.75 / 0.25

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


# ---------------------------------------------------------------- mirroring inside the window loop
def test_per_window_mirroring_by_hand():
    x = torch.randn(1, 1, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    # the ramp is the position inside the window the model sees; one window covering the image: flipping along y,
    # predicting and flipping back gives x + (4 - y);
    # the mean with the plain x + y is x + 2 everywhere
    out = sliding_window(_ramp_predictor(1), x, (6, 5, 4), blend="constant", mirror_axes=(1,))
    torch.testing.assert_close(out, torch.cat([x + 2.0, -x], 1))
    # axes the predictor does not depend on change nothing
    torch.testing.assert_close(sliding_window(_ramp_predictor(1), x, (6, 5, 4), mirror_axes=(0, 2)),
                               _ramp_predictor(1)(x))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_per_window_mirroring_equals_whole_volume_logit_mirroring_on_a_symmetric_grid(blend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv3d(4, 3, 3, padding=1)).eval()
    x = torch.randn(1, 1, 48, 40, 32)
    # window 16, overlap 0.5: starts 0, 8, ..., size - 16 along every axis (mirror-symmetric grids)
    per_window = sliding_window(net, x, 16, blend=blend, mirror_axes=(0, 1, 2))
    whole = mirror_tta(lambda t: sliding_window(net, t, 16, blend=blend), x, axes=(0, 1, 2), activation="none")
    torch.testing.assert_close(per_window, whole, atol=1e-5, rtol=1e-5)
    assert float((per_window - sliding_window(net, x, 16, blend=blend)).abs().max()) > 1e-3  # TTA did something


def test_per_window_mirroring_on_an_asymmetric_grid_differs_only_slightly():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 44, 16, 16)
    # along z the starts are 0, 8, 16, 24, 28: the flipped volume's windows sit elsewhere
    per_window = sliding_window(net, x, 16, mirror_axes=(0,))
    whole = mirror_tta(lambda t: sliding_window(net, t, 16), x, axes=(0,), activation="none")
    diff = (per_window - whole).abs()
    assert float(diff.max()) > 1e-6                  # not the same computation ...
    assert float(diff.max()) < 0.2 * float(whole.abs().max())   # ... but the same prediction, blended differently


def test_per_window_mirroring_slicewise_ignores_the_slice_axis():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 5, 32, 24)
    got = sliding_window(net, x, (16, 16), axis=0, mirror_axes=(0, 1, 2))
    want = mirror_tta(lambda t: sliding_window(net, t, (16, 16), axis=0), x, axes=(1, 2), activation="none")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_per_window_mirroring_leaves_the_models_output_alone_and_checks_axes():
    canned = torch.randn(2, 2, 8, 8, 8)
    before = canned.clone()
    out = sliding_window(lambda t: canned[: t.shape[0]], torch.zeros(1, 1, 8, 8, 8), 8, mirror_axes=(0, 2))
    torch.testing.assert_close(canned, before)
    torch.testing.assert_close(out[0], (canned[0] + canned[0].flip(1) + canned[0].flip(3)
                                        + canned[0].flip(1, 3)) / 4)
    with pytest.raises(ConfigError, match="mirror_axes"):
        sliding_window(lambda t: t, torch.zeros(1, 1, 8, 8, 8), 8, mirror_axes=(3,))
    with pytest.raises(ConfigError, match="mirror_axes"):
        sliding_window(lambda t: t, torch.zeros(1, 1, 8, 8, 8), 8, mirror_axes=(1, 1))


@pytest.mark.parametrize("group", [2, 3, 8])
@pytest.mark.parametrize("activation", ["softmax", "none"])
def test_mirror_tta_grouped_flips_equal_one_flip_per_call(group, activation):
    """Flips stacked along the batch axis (``group``) give what one call per flip gives: the ramp
    predictor works voxel by voxel, so bitwise; a case of 2 images keeps its images apart."""
    x = torch.randn(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    calls = []

    def predict(t):
        calls.append(t.shape[0])
        return _ramp_predictor(1)(t)

    want = mirror_tta(predict, x, axes=(0, 1, 2), activation=activation)
    assert calls == [2] * 8
    calls.clear()
    got = mirror_tta(predict, x, axes=(0, 1, 2), activation=activation, group=group)
    assert calls == [2 * min(group, 8 - k) for k in range(0, 8, group)]
    assert torch.equal(got, want)
    assert torch.equal(x, torch.randn(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match="group"):
        mirror_tta(predict, x, axes=(0,), group=0)


def test_mirror_tta_grouped_through_sliding_window_matches():
    """Through sliding_window and a convolution, grouped flips agree with one flip per call to float32
    rounding (the same windows, in batches of other sizes)."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    x = torch.randn(1, 1, 12, 10, 14)
    run = lambda t: sliding_window(net, t, (12, 10, 14), batch_size=4)  # noqa: E731  one window per flip
    want = mirror_tta(run, x, axes=(0, 1, 2))
    torch.testing.assert_close(mirror_tta(run, x, axes=(0, 1, 2), group=4), want, rtol=0, atol=1e-6)
