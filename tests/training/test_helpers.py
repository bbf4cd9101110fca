"""The training test helpers themselves: the tiny registered net and the synthetic data set."""

from __future__ import annotations

import numpy as np
import torch

from tests.training.helpers import TinyTestNet, make_dataset


def test_tiny_net_forward_backward_shapes():
    net = TinyTestNet(in_channels=2, out_channels=3)
    x = torch.randn(2, 2, 8, 12, 8, requires_grad=True)
    outs = net.forward_with_aux(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 4)]
    outs[0].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_make_dataset_roundtrip(tmp_path):
    from medseg.io import read_volume

    root = make_dataset(tmp_path / "ds", n=2)
    img = read_volume(root / "imagesTr" / "case_000.nii.gz")
    lab = read_volume(root / "labelsTr" / "case_000.nii.gz")
    assert img.shape == (16, 20, 16) and lab.same_grid(img)
    assert set(np.unique(lab.array).tolist()) == {0, 1, 2}
