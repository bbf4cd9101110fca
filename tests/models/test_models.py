"""Every registered model, 2D and 3D: forward + backward on odd sizes, deep supervision, counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models import SEG_MODELS, create_seg_model, seg_model_names
from medseg.models.blocks import count_parameters

# Tiny widths so the whole file runs in seconds on 2 CPU cores.
TINY = {
    "unet": dict(features=(4, 8, 16)),
    "transunet": dict(features=(4, 8, 8, 16), hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                      decoder_channels=(8, 8, 4, 4), pos_grid=2),
    "swin_unet": dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=3),
}
ODD = {2: (37, 29), 3: (19, 27, 13)}




def _aux_sizes(name: str, size: tuple[int, ...], kw: dict) -> list[tuple[int, ...]]:
    """Expected spatial sizes of forward_with_aux outputs, from each model's documented factors."""
    if name == "unet":
        factors = [2 ** k for k in range(len(kw["features"]) - 1)]
    elif name == "transunet":
        factors = [1, 2, 4, 8]
    else:  # swin_unet: main, then decoder token grids at 1/8, 1/16, ... (patch 4)
        factors = [1] + [4 * 2 ** k for k in range(1, len(kw["depths"]) - 1)]
    return [tuple(math.ceil(s / f) for s in size) for f in factors]


def test_registered_names():
    assert {"unet", "transunet", "swin_unet"} <= set(seg_model_names())
    # segmentation networks have their own registry (MIL heads: tests/mil/test_fit.py, tile encoders:
    # tests/wsi/test_features.py); test-only nets start with "tiny_test".
    seg_models = {n for n in seg_model_names() if not n.startswith("tiny_test")}
    assert set(TINY) == seg_models, "add a tiny config for every new segmentation model"


def test_one_registry_per_contract():
    from medseg.models.encoders import ENCODER_NAMES, TILE_ENCODERS, create_encoder, encoder_names
    from medseg.models.mil import MIL_HEADS, MIL_MODELS, create_mil_head, mil_head_names

    assert set(MIL_MODELS) == set(mil_head_names()) == {"attention_mil", "gated_attention_mil", "mean_mil", "max_mil"}
    assert set(ENCODER_NAMES) == set(encoder_names()) == {"tile_resnet18", "tile_resnet_small", "tile_resnet_tiny",
                                                          "monai_resnet18", "monai_resnet50", "resnet50_trunc",
                                                          "vit_small_patch16", "vit_base_patch16"}
    seg = set(seg_model_names())
    assert not seg & set(MIL_HEADS) and not seg & set(TILE_ENCODERS) and not set(MIL_HEADS) & set(TILE_ENCODERS)
    # a name is built only by the registry of its contract
    assert create_mil_head("mean_mil", in_features=3).__class__.__name__ == "PoolingMIL"
    assert create_encoder("tile_resnet_tiny").feature_dim == 64
    with pytest.raises(ConfigError, match="unknown model 'mean_mil'"):
        create_seg_model("mean_mil", spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(ConfigError, match="unknown MIL head 'unet'"):
        create_mil_head("unet", in_features=3)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_odd_sizes(name, dims):
    torch.manual_seed(0)
    model = create_seg_model(name, spatial_dims=dims, in_channels=2, out_channels=3, deep_supervision=True,
                         **TINY[name])
    x = torch.randn(2, 2, *ODD[dims])
    outs = model.forward_with_aux(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, *s) for s in _aux_sizes(name, ODD[dims], TINY[name])]
    main = model(x)
    assert main.shape == (2, 3, *ODD[dims]) and torch.isfinite(main).all()
    # random weights: a plain sum would give zero gradients through instance norm
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)))
    assert first.weight.shape[1] == 2  # it is the input layer
    assert torch.isfinite(first.weight.grad).all() and first.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused  # every parameter is used (DDP needs this)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_eval_batch_independent_and_plain_aux(name, dims):
    """In eval mode a sample's logits do not depend on the rest of the batch (catches reshape bugs
    that mix samples); without deep supervision forward_with_aux is [forward]."""
    torch.manual_seed(1)
    model = create_seg_model(name, spatial_dims=dims, in_channels=1, out_channels=2, **TINY[name]).eval()
    x = torch.randn(3, 1, *ODD[dims])
    with torch.no_grad():
        both = model(x)
        one = model(x[1:2])
        aux = model.forward_with_aux(x[1:2])
    torch.testing.assert_close(both[1:2], one, rtol=1e-4, atol=1e-5)
    assert len(aux) == 1
    torch.testing.assert_close(aux[0], one)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_sizes(name):
    """Inputs smaller than the total downsampling factor work, also in training mode (the models
    pad when the coarsest level would be one voxel, where instance norm is undefined)."""
    model = create_seg_model(name, spatial_dims=3, in_channels=1, out_channels=2, deep_supervision=True,
                         **TINY[name])
    outs = model.forward_with_aux(torch.randn(1, 1, 5, 3, 7))
    assert outs[0].shape == (1, 2, 5, 3, 7)
    assert outs[1].shape[2:] == _aux_sizes(name, (5, 3, 7), TINY[name])[1]


def test_unet_parameter_count_by_hand():
    # features (2, 4), 2D, 1 -> 3 channels, conv without bias + instance-norm affine (2 per channel):
    # enc0: 1*2*9 + 4 + 2*2*9 + 4 = 62; enc1: 2*4*9 + 8 + 4*4*9 + 8 = 232;
    # up: 4*2*2*2 = 32; dec0: 4*2*9 + 4 + 2*2*9 + 4 = 116; head: 2*3 + 3 = 9  -> 451
    kw = dict(spatial_dims=2, in_channels=1, out_channels=3, features=(2, 4))
    assert count_parameters(create_seg_model("unet", **kw)) == 451
    assert count_parameters(create_seg_model("unet", norm="batch", **kw)) == 451
    # residual projections (1x1 conv + norm): enc0 1->2: 2 + 4; enc1 2->4: 8 + 8; dec0 4->2: 8 + 4
    assert count_parameters(create_seg_model("unet", residual=True, **kw)) == 451 + 34
    # deep supervision with 2 levels has no aux level; with 3 levels one head 4 -> 3 (+ bias)
    ds = create_seg_model("unet", deep_supervision=True, **{**kw, "features": (2, 4, 8)})
    plain = create_seg_model("unet", **{**kw, "features": (2, 4, 8)})
    assert count_parameters(ds) - count_parameters(plain) == 4 * 3 + 3


@pytest.mark.parametrize("name,dims,low,high", [
    ("unet", 2, 1.0e6, 3.0e6), ("unet", 3, 3.0e6, 8.0e6),
    ("transunet", 2, 3.0e6, 10e6), ("transunet", 3, 8.0e6, 20e6),
    ("swin_unet", 2, 4.0e6, 10e6), ("swin_unet", 3, 4.0e6, 12e6),
])
def test_default_parameter_counts(name, dims, low, high):
    """Defaults are sized for small medical data sets (a few million parameters)."""
    n = count_parameters(create_seg_model(name, spatial_dims=dims, in_channels=1, out_channels=2))
    assert low < n < high, n


def test_unet_anisotropic_strides():
    model = create_seg_model("unet", spatial_dims=3, in_channels=1, out_channels=2, features=(4, 8, 8),
                         strides=((1, 2, 2), 2), deep_supervision=True)
    outs = model.forward_with_aux(torch.randn(1, 1, 5, 17, 14))
    assert [tuple(o.shape[2:]) for o in outs] == [(5, 17, 14), (5, 9, 7)]
    assert model(torch.randn(1, 1, 5, 17, 14)).shape == (1, 2, 5, 17, 14)


def test_transunet_position_embedding():
    model = create_seg_model("transunet", spatial_dims=2, in_channels=1, out_channels=2,
                         **{**TINY["transunet"], "pos_grid": (3, 4)})
    pe = model.pos_embed
    # the reference grid is used as learned, token order = C-order over (y, x)
    torch.testing.assert_close(model.position_embedding((3, 4))[0, 5], pe[0, :, 1, 1])
    with torch.no_grad():
        pe.fill_(0.25)
    other = model.position_embedding((7, 2))
    assert other.shape == (1, 14, 16)
    torch.testing.assert_close(other, torch.full_like(other, 0.25))  # interpolating a constant


@pytest.mark.parametrize("bad", [dict(spatial_dims=4), dict(spatial_dims=2, norm="layer")])
def test_bad_config_raises(bad):
    kw = dict(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8))
    with pytest.raises(ConfigError):
        create_seg_model("unet", **{**kw, **bad})
    with pytest.raises(ConfigError, match="unknown model"):
        create_seg_model("vnet", **kw)
    assert "unet" in SEG_MODELS


@pytest.mark.parametrize("name", sorted(TINY))
def test_learns_a_toy_segmentation(name):
    """25 Adam steps fit bright squares in noise. A model that ignored its input could at best learn
    the class prior (49/256 foreground: cross-entropy 0.49 nats); the models must get well below
    (catches blocked gradients or broken initialisation)."""
    torch.manual_seed(0)
    model = create_seg_model(name, spatial_dims=2, in_channels=1, out_channels=2, **TINY[name])
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 2:9, 3:10] = 1
    target[1, 7:14, 5:12] = 1
    image = target[:, None].float() * 2.0 + 0.3 * torch.randn(2, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 and losses[-1] < 0.5 * losses[0], losses[::6]


def test_swin_unet_anisotropic_patch_and_window():
    model = create_seg_model("swin_unet", spatial_dims=3, in_channels=1, out_channels=2, embed_dim=8,
                         depths=(2, 2, 2), num_heads=(1, 2, 2), patch_size=(1, 4, 4), window_size=(2, 4, 4),
                         deep_supervision=True)
    outs = model.forward_with_aux(torch.randn(1, 1, 5, 30, 21))
    # aux grid: patch (1, 4, 4) then one merging by 2 -> ceil(5 / 2), ceil(30 / 8), ceil(21 / 8)
    assert [tuple(o.shape[2:]) for o in outs] == [(5, 30, 21), (3, 4, 3)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_wrong_input_rank_raises(name):
    model = create_seg_model(name, spatial_dims=2, in_channels=1, out_channels=2, **TINY[name])
    with pytest.raises(ConfigError, match="SliceWise"):
        model(torch.zeros(1, 1, 4, 16, 16))


def test_transunet_anisotropic_strides():
    model = create_seg_model("transunet", spatial_dims=3, in_channels=1, out_channels=2, deep_supervision=True,
                         strides=(2, (1, 2, 2), (1, 2, 2), 2), **TINY["transunet"])
    outs = model.forward_with_aux(torch.randn(1, 1, 9, 33, 20))
    # cumulative factors (2,2,2), (2,4,4), (2,8,8)
    assert [tuple(o.shape[2:]) for o in outs] == [(9, 33, 20), (5, 17, 10), (5, 9, 5), (5, 5, 3)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_safetensors_roundtrip(name, tmp_path):
    """Weights saved with safetensors load into a freshly built model and give the same logits."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    a = create_seg_model(name, spatial_dims=3, in_channels=1, out_channels=2, **TINY[name]).eval()
    save_file(a.state_dict(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    b = create_seg_model(name, spatial_dims=3, in_channels=1, out_channels=2, **TINY[name]).eval()
    b.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    x = torch.randn(1, 1, 9, 17, 12)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_unet_per_level_kernels():
    """``kernels`` (from medseg plan on thick slices): a 1 x 3 x 3 level has no z extent in its weights
    and no z mixing, so two inputs differing only in one z-slice differ only in that slice's output."""
    import torch

    from medseg.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, features=[4, 8], strides=[[1, 2, 2]],
               kernels=[[1, 3, 3], [1, 3, 3]], norm="none").eval()
    assert tuple(net.encoder[0].conv1[0].weight.shape[2:]) == (1, 3, 3)
    x = torch.randn(1, 1, 5, 8, 8)
    y = x.clone()
    y[0, 0, 2] += 1.0
    with torch.no_grad():
        d = (net(x) - net(y)).abs().sum(dim=(0, 1, 3, 4))
    assert d[2] > 0 and torch.all(d[[0, 1, 3, 4]] == 0)
    with pytest.raises(Exception, match="kernels needs 2"):
        UNet(spatial_dims=3, in_channels=1, out_channels=2, features=[4, 8], kernels=[3])
