"""TransUNet (Chen et al. 2021, arXiv:2102.04306): a ResNet-style CNN encoder, ViT layers on the
1/16-resolution feature tokens, and a cascaded upsampler with skip connections; 2D as published
(R50-ViT hybrid, scaled down here) and the same design in 3D.

Encoder (published resolutions): stem conv stride 2 (1/2) -> max-pool + residual stage (1/4)
-> residual stage stride 2 (1/8) -> residual stage stride 2 (1/16) -> 1x1 patch embedding
(patch size 1 on the 1/16 map) + learned position embedding -> pre-norm transformer layers.
Decoder: conv 3x3 -> 4 blocks of (x2 upsampling, concat skip from 1/8, 1/4, 1/2, none, two conv
3x3) -> 3x3 segmentation head. The position embedding is learned on a reference token grid and
interpolated (bi/trilinear) to the token grid of the actual input, so any input size works.

>>> import torch
>>> net = TransUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 8, 16),
...                 hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, decoder_channels=(8, 8, 4, 4))
>>> net(torch.zeros(1, 1, 35, 19)).shape
torch.Size([1, 2, 35, 19])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError
from medseg.models.blocks import (
    ConvNormAct,
    ConvUnit,
    as_tuple,
    check_dims,
    check_input,
    conv_nd,
    init_conv_weights,
    level_logits,
    match_size,
    pad_single_voxel_bottleneck,
)
from medseg.models.seg_registry import register_seg_model


class Mlp(nn.Sequential):
    """Linear -> GELU -> dropout -> linear -> dropout on (..., dim) tokens."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"transunet: hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (B, L, 3 * dim) -> 3 x (B, heads, L, head_dim)
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm ViT layer: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _stage(d: int, in_ch: int, out_ch: int, *, blocks: int, stride: int | Sequence[int],
           norm: str) -> nn.Sequential:
    layers = [ConvUnit(d, in_ch, out_ch, stride=stride, norm=norm, residual=True)]
    layers += [ConvUnit(d, out_ch, out_ch, norm=norm, residual=True) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DecoderBlock(nn.Module):
    """Upsample (bi/trilinear) to the skip's size, concatenate the skip, two conv 3x3."""

    def __init__(self, d: int, in_ch: int, skip_ch: int, out_ch: int, norm: str):
        super().__init__()
        self.mode = "bilinear" if d == 2 else "trilinear"
        self.conv = nn.Sequential(ConvNormAct(d, in_ch + skip_ch, out_ch, norm=norm),
                                  ConvNormAct(d, out_ch, out_ch, norm=norm))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class TransUNet(nn.Module):
    """CNN-Transformer hybrid encoder + cascaded upsampler.

    Parameters
    ----------
    spatial_dims, in_channels, out_channels
        2 or 3; input channels; output logit channels.
    features
        Channels of the stem (1/2) and the three residual stages (1/4, 1/8, 1/16).
    blocks_per_stage
        Residual basic blocks per stage (the published R50 uses 3, 4, 9 bottleneck blocks).
    hidden_size, num_layers, num_heads, mlp_dim, dropout
        ViT width, depth, heads, MLP width and dropout (published ViT-B: 768, 12, 12, 3072, 0.1).
    decoder_channels
        Channels of the four upsampling blocks (1/8, 1/4, 1/2, 1/1); published (256, 128, 64, 16).
    norm
        Normalisation of all conv layers (``instance``, ``batch``, ``group``, ``none``).
    strides
        Downsampling of the stem, the max-pool and stages 2 and 3 (4 entries, each an int or one
        int per axis); default 2 everywhere (tokens at 1/16). E.g. ``(2, (1, 2, 2), (1, 2, 2), 2)``
        keeps more of the z axis of thick-slice CT.
    pos_grid
        Token grid on which the position embedding is learned (default 14x14 = 224 px / 16 in 2D,
        8x8x8 = 128 voxels / 16 in 3D); other grids get an interpolated embedding.
    deep_supervision
        1x1 heads on the 1/2, 1/4 and 1/8 decoder maps, returned by :meth:`forward_with_aux`.

    Shapes: input (N, in_channels, *S) -> logits (N, out_channels, *S), any ``S``.
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] = (32, 64, 128, 256), blocks_per_stage: int = 2,
                 hidden_size: int = 256, num_layers: int = 4, num_heads: int = 8, mlp_dim: int = 512,
                 dropout: float = 0.0, decoder_channels: Sequence[int] = (128, 64, 32, 16),
                 norm: str = "instance", strides: Sequence[int | Sequence[int]] | None = None,
                 pos_grid: int | Sequence[int] | None = None, deep_supervision: bool = False):
        super().__init__()
        d = self.spatial_dims = check_dims(spatial_dims, model="transunet")
        if len(features) != 4 or len(decoder_channels) != 4:
            raise ConfigError("transunet: features and decoder_channels need 4 entries each, got "
                              f"{list(features)} and {list(decoder_channels)}")
        f = [int(c) for c in features]
        dec = [int(c) for c in decoder_channels]
        st = [as_tuple(v, d, name="transunet strides") for v in (strides if strides is not None else [2] * 4)]
        if len(st) != 4:
            raise ConfigError("transunet: strides needs 4 entries (stem, pool, stage 2, stage 3), "
                              f"got {list(strides or [])}")
        self.factors = [(1,) * d]  # cumulative downsampling of the full, 1/2, 1/4, 1/8, 1/16 maps
        for v in st:
            self.factors.append(tuple(a * b for a, b in zip(self.factors[-1], v)))
        self.stem = ConvNormAct(d, in_channels, f[0], kernel=7 if d == 2 else 3, stride=st[0], norm=norm)
        pool = nn.MaxPool2d if d == 2 else nn.MaxPool3d
        self.stage1 = nn.Sequential(pool(3, stride=st[1], padding=1),
                                    _stage(d, f[0], f[1], blocks=blocks_per_stage, stride=1, norm=norm))
        self.stage2 = _stage(d, f[1], f[2], blocks=blocks_per_stage, stride=st[2], norm=norm)
        self.stage3 = _stage(d, f[2], f[3], blocks=blocks_per_stage, stride=st[3], norm=norm)
        self.patch_embed = conv_nd(d)(f[3], hidden_size, 1)
        grid = as_tuple(pos_grid if pos_grid is not None else (14 if d == 2 else 8), d, name="pos_grid")
        self.pos_embed = nn.Parameter(torch.zeros(1, hidden_size, *grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([TransformerLayer(hidden_size, num_heads, mlp_dim, dropout)
                                     for _ in range(num_layers)])
        self.norm = nn.LayerNorm(hidden_size)
        self.conv_more = ConvNormAct(d, hidden_size, f[3], norm=norm)
        skip_ch = [f[2], f[1], f[0], 0]
        in_ch = [f[3]] + dec[:-1]
        self.decoder = nn.ModuleList([DecoderBlock(d, i, s, o, norm) for i, s, o in zip(in_ch, skip_ch, dec)])
        self.head = conv_nd(d)(dec[-1], out_channels, 3, padding=1)
        self.deep_supervision = bool(deep_supervision)
        if self.deep_supervision:
            self.aux_heads = nn.ModuleList([conv_nd(d)(c, out_channels, 1) for c in dec[2::-1]])
        init_conv_weights(self)

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """Position embedding (1, L, hidden) for a token grid ``grid`` (interpolated if needed)."""
        pe = self.pos_embed
        if tuple(pe.shape[2:]) != tuple(grid):
            mode = "bilinear" if pe.ndim == 4 else "trilinear"
            pe = F.interpolate(pe, size=tuple(grid), mode=mode, align_corners=False)
        return pe.flatten(2).transpose(1, 2)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.spatial_dims, model="transunet")
        x = pad_single_voxel_bottleneck(x, self.factors[-1])
        size = x.shape[2:]
        s1 = self.stem(x)          # 1/2
        s2 = self.stage1(s1)       # 1/4
        s3 = self.stage2(s2)       # 1/8
        s4 = self.stage3(s3)       # 1/16
        e = self.patch_embed(s4)   # (N, hidden, *grid)
        grid = e.shape[2:]
        tokens = self.pos_drop(e.flatten(2).transpose(1, 2) + self.position_embedding(grid))
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)  # (N, L, hidden)
        y = self.conv_more(tokens.transpose(1, 2).reshape(e.shape))
        levels = []
        for block, skip, target in zip(self.decoder, (s3, s2, s1, None), (s3.shape[2:], s2.shape[2:],
                                                                          s1.shape[2:], size)):
            y = block(y, skip, target)
            levels.append(y)
        return levels[::-1]  # full, 1/2, 1/4, 1/8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, out_channels, *S) for input (N, in_channels, *S)."""
        return match_size(self.head(self._decode(x)[0]), x.shape[2:])

    def forward_with_aux(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Main logits, then (with ``deep_supervision``) logits at 1/2, 1/4, 1/8 resolution
        (sizes ``ceil(S / 2)``, ``ceil(S / 4)``, ``ceil(S / 8)`` with the default strides; in
        general ``ceil(S / factors[k])``)."""
        aux_heads = self.aux_heads if self.deep_supervision else ()
        return level_logits(self._decode(x), self.head, aux_heads, factors=self.factors, size=x.shape[2:])


@register_seg_model("transunet")
def transunet(*, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> TransUNet:
    """TransUNet factory (see :class:`TransUNet`).

    Default parameter counts (1 in, 2 out): 2D 6.36 M, 3D 14.60 M (the published R50-ViT-B
    TransUNet has about 105 M; these defaults are sized for small medical data sets).
    """
    return TransUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
