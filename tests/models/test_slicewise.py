"""Slice-wise application of 2D models to volumes."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError
from medseg.models import create_seg_model
from medseg.models.slicewise import SliceWise, slicewise_model, slicing_axis


@pytest.mark.parametrize("spacing,axis", [
    ((5.0, 0.8, 0.8), 0), ((1.0, 1.0, 1.0), 0), ((0.7, 3.0, 0.7), 1), ((1.0, 1.0, 2.5), 2),
    ((0.9, 2.0, 2.0), 1), ((2.0, 2.0 * (1 - 1e-5), 1.0), 0),
])
def test_slicing_axis(spacing, axis):
    assert slicing_axis(spacing) == axis


@pytest.mark.parametrize("bad", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0)])
def test_slicing_axis_rejects_bad_spacing(bad):
    with pytest.raises(ConfigError):
        slicing_axis(bad)


def _tiny2d(in_channels: int, **kw):
    torch.manual_seed(0)
    return create_seg_model("unet", spatial_dims=2, in_channels=in_channels, out_channels=3, features=(4, 8),
                        **kw).eval()


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("context", [0, 1])
def test_slicewise_equals_manual_loop(axis, context):
    model = _tiny2d(2 * (2 * context + 1))
    net = SliceWise(model, axis=axis, context=context, chunk_size=2)
    x = torch.randn(2, 2, 5, 6, 7)
    with torch.no_grad():
        got = net(x)
        n_slices = x.shape[2 + axis]
        manual = []
        for s in range(n_slices):
            nbrs = [min(max(s + o, 0), n_slices - 1) for o in range(-context, context + 1)]
            inp = torch.cat([x.select(2 + axis, t) for t in nbrs], dim=1)  # (N, (2c+1) * C, h, w)
            manual.append(model(inp))
        want = torch.stack(manual, dim=2 + axis)
    assert got.shape == (2, 3, 5, 6, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_slicewise_chunking_does_not_change_result():
    model = _tiny2d(1)
    x = torch.randn(1, 1, 7, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(SliceWise(model, axis=0, chunk_size=3)(x),
                                   SliceWise(model, axis=0, chunk_size=None)(x))


def test_slicewise_aux_and_backward():
    net = slicewise_model("unet", axis=1, in_channels=1, out_channels=2, context=1, features=(4, 8, 8),
                          deep_supervision=True, chunk_size=4)
    x = torch.randn(2, 1, 9, 6, 11)
    outs = net.forward_with_aux(x)
    # the slicing axis (y) keeps its size; the in-plane axes (z, x) are halved (ceil)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 9, 6, 11), (2, 2, 5, 6, 6)]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_slicewise_rejects_bad_input():
    with pytest.raises(ConfigError):
        SliceWise(_tiny2d(1), axis=3)
    with pytest.raises(ConfigError, match="N, C, D, H, W"):
        SliceWise(_tiny2d(1), axis=0)(torch.zeros(1, 1, 4, 4))
