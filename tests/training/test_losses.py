"""Losses, learning-rate schedule and validation helpers against hand-worked values and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.training.losses import (
    deep_supervision_loss,
    deep_supervision_weights,
    downsample_target,
    seg_loss,
    soft_dice_loss,
)
from medseg.training.setup import lr_at
from medseg.training.validate import dice_per_label, pad_to_multiple, predict_logits


def test_soft_dice_by_hand():
    # 1 sample, 2 classes, 2 voxels; probabilities p1 = softmax -> (0.5, 0.5) at voxel 0 and ~1 at voxel 1
    logits = torch.tensor([[[0.0, -30.0], [0.0, 30.0]]])          # (N=1, C=2, 2)
    target = torch.tensor([[1, 1]])
    # class 1: inter = 0.5 + 1 = 1.5, sum p = 1.5, sum g = 2 -> dice = 3 / 3.5
    assert float(soft_dice_loss(logits, target, eps=0.0)) == pytest.approx(1 - 3 / 3.5, abs=1e-6)


def test_soft_dice_matches_monai():
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, 7, generator=g)
    target = torch.randint(0, 3, (2, 5, 6, 7), generator=g)
    ref = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5,
                   batch=False)(logits, target[:, None])
    assert float(soft_dice_loss(logits, target)) == pytest.approx(float(ref), abs=1e-6)
    ref_b = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5,
                     batch=True)(logits, target[:, None])
    assert float(soft_dice_loss(logits, target, batch_dice=True)) == pytest.approx(float(ref_b), abs=1e-6)


def test_dice_ce_is_the_sum():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=g)
    both = seg_loss(logits, target)
    assert float(both) == pytest.approx(float(F.cross_entropy(logits, target) + soft_dice_loss(logits, target)),
                                        abs=1e-6)
    assert float(seg_loss(logits, target, kind="ce")) == pytest.approx(float(F.cross_entropy(logits, target)))


def test_deep_supervision():
    assert deep_supervision_weights(2) == pytest.approx([2 / 3, 1 / 3])
    t = torch.tensor([[[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]]])   # (1, 1, 4, 4)
    small = downsample_target(t, (1, 2, 2))
    assert small[0, 0].tolist() == [[0, 1], [2, 0]]
    g = torch.Generator().manual_seed(2)
    outs = [torch.randn(1, 3, 1, 4, 4, generator=g), torch.randn(1, 3, 1, 2, 2, generator=g)]
    expect = 2 / 3 * seg_loss(outs[0], t) + 1 / 3 * seg_loss(outs[1], small)
    assert float(deep_supervision_loss(outs, t)) == pytest.approx(float(expect), abs=1e-6)


def test_lr_schedules():
    assert lr_at(0, total=100, base=1.0, warmup=10, schedule="poly") == pytest.approx(0.01)
    assert lr_at(5, total=100, base=1.0, warmup=10, schedule="poly") == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(55, total=100, base=1.0, warmup=10, schedule="poly", power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_at(55, total=100, base=2.0, warmup=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(99, total=100, base=2.0, warmup=0, schedule="constant") == 2.0
    assert lr_at(100, total=100, base=1.0, warmup=0, schedule="poly") == 0.0


def test_dice_per_label_by_hand():
    pred = np.array([[0, 1, 1, 2, 2, 2]])
    ref = np.array([[0, 1, 2, 2, 2, 0]])
    d = dice_per_label(pred, ref, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / (2 + 1)) and d[2] == pytest.approx(2 * 2 / (3 + 3))
    assert d[3] == 1.0                  # absent from both: 1.0, as medseg.metrics counts it


def test_pad_to_multiple_and_predict_roundtrip():
    x = torch.arange(3 * 5 * 7, dtype=torch.float32).reshape(1, 1, 3, 5, 7)
    xp, crop = pad_to_multiple(x, 4)
    assert tuple(xp.shape) == (1, 1, 4, 8, 8) and torch.equal(xp[crop], x)
    # an identity "model" with one output channel: prediction is the image itself, cropped back
    net = torch.nn.Conv3d(1, 1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    out = predict_logits(net, x[0].numpy(), divisor=4, device=torch.device("cpu"))
    assert torch.equal(out, x[0])
