"""Swin-UNet (Cao et al. 2021, arXiv:2105.05537): a pure Swin-Transformer U-shaped network;
2D as published and the same design in 3D.

Encoder: patch partition + linear embedding (a conv with kernel = stride = ``patch_size``), then
stages of Swin blocks (window / shifted-window attention alternating) at 1/4, 1/8, 1/16 with
patch merging between them; the last stage (1/32) is the bottleneck. Decoder: patch expanding
(x2), concatenation with the encoder features of the same resolution, a linear layer back to the
stage width, Swin blocks, ... and a final x4 patch expanding to full resolution followed by a
linear (1x1) projection to the classes.

Skip connections take the encoder stage outputs after their Swin blocks (as drawn in the paper's
Fig. 1; the reference code takes the stage inputs). Any input size works: the input is zero-padded
to a multiple of ``patch_size``, patch merging pads odd grids, each expanded grid is cropped to its
skip's grid and the output is cropped to the input size.

>>> import torch
>>> net = SwinUNet(spatial_dims=2, in_channels=1, out_channels=2, embed_dim=8, depths=(2, 2),
...                num_heads=(1, 2), window_size=4)
>>> net(torch.zeros(1, 1, 37, 22)).shape
torch.Size([1, 2, 37, 22])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ConfigError
from medseg.models.blocks import as_tuple, check_dims, check_input, conv_nd, match_size, pad_to_multiple
from medseg.models.seg_registry import register_seg_model
from medseg.models.swin import PatchExpand, PatchMerging, SwinBlock


class SwinStage(nn.Sequential):
    """``depth`` Swin blocks, regular and shifted windows alternating; tokens (B, *G, C) in and out."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Sequence[int], mlp_ratio: float,
                 drop_path: Sequence[float]):
        super().__init__(*[SwinBlock(dim, num_heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio,
                                     drop_path=drop_path[i]) for i in range(depth)])


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)  # (B, C, *G) -> (B, *G, C)


def _to_maps(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)  # (B, *G, C) -> (B, C, *G)


class SwinUNet(nn.Module):
    """Swin-Transformer encoder-decoder.

    Parameters
    ----------
    spatial_dims, in_channels, out_channels
        2 or 3; input channels; output logit channels.
    embed_dim
        Token width C at 1/4 resolution; stage ``i`` has width ``C * 2**i`` (published: 96).
    depths, num_heads
        Swin blocks and attention heads per encoder stage, the last being the bottleneck
        (published: (2, 2, 2, 2) and (3, 6, 12, 24)); the decoder mirrors them.
    window_size
        Attention window (int or per axis). Default 8 in 2D (the paper uses 7 for 224 px input;
        8 tiles the power-of-two grids of typical medical patches) and 4 in 3D.
    patch_size
        Patch partition size (int or per axis), also the final expanding factor; default 4.
    mlp_ratio, drop_path_rate
        MLP width factor and the largest stochastic-depth rate (linear over the blocks).
    deep_supervision
        Linear heads on the decoder stages below the 1/4 one, returned by :meth:`forward_with_aux`.

    Shapes: input (N, in_channels, *S) -> logits (N, out_channels, *S), any ``S``.
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, out_channels: int, embed_dim: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Sequence[int] | None = None, patch_size: int | Sequence[int] = 4,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, deep_supervision: bool = False):
        super().__init__()
        d = self.spatial_dims = check_dims(spatial_dims, model="swin_unet")
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ConfigError(f"swin_unet: depths {list(depths)} and num_heads {list(num_heads)} need the "
                              "same length (>= 2)")
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        for dim, h in zip(dims, num_heads):
            if dim % h:
                raise ConfigError(f"swin_unet: stage width {dim} is not divisible by num_heads {h}")
        window = as_tuple(window_size if window_size is not None else (8 if d == 2 else 4), d,
                          name="swin_unet window_size")
        self.patch = as_tuple(patch_size, d, name="swin_unet patch_size")
        n = len(depths)
        self.patch_embed = conv_nd(d)(in_channels, embed_dim, self.patch, stride=self.patch)
        self.embed_norm = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        offsets = [sum(depths[:i]) for i in range(n)]
        self.encoder = nn.ModuleList([SwinStage(dims[i], depths[i], num_heads[i], window, mlp_ratio,
                                                rates[offsets[i]:offsets[i] + depths[i]]) for i in range(n)])
        self.merge = nn.ModuleList([PatchMerging(dims[i], d) for i in range(n - 1)])
        self.norm = nn.LayerNorm(dims[-1])
        # decoder level i (i = n-2 ... 0): expand dims[i+1] -> dims[i], fuse skip, Swin blocks
        self.expand = nn.ModuleList([PatchExpand(dims[i + 1], dims[i], (2,) * d) for i in range(n - 1)])
        self.fuse = nn.ModuleList([nn.Linear(2 * dims[i], dims[i]) for i in range(n - 1)])
        self.decoder = nn.ModuleList([SwinStage(dims[i], depths[i], num_heads[i], window, mlp_ratio,
                                                rates[offsets[i]:offsets[i] + depths[i]]) for i in range(n - 1)])
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final_expand = PatchExpand(embed_dim, embed_dim, self.patch)
        self.head = conv_nd(d)(embed_dim, out_channels, 1, bias=False)
        self.deep_supervision = bool(deep_supervision)
        if self.deep_supervision:
            self.aux_heads = nn.ModuleList([nn.Linear(dims[i], out_channels) for i in range(1, n - 1)])
        self.apply(_init)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.spatial_dims, model="swin_unet")
        t = self.embed_norm(_to_tokens(self.patch_embed(pad_to_multiple(x, self.patch))))
        skips = []
        for i, stage in enumerate(self.encoder):
            t = stage(t)
            if i < len(self.merge):
                skips.append(t)
                t = self.merge[i](t)
        t = self.norm(t)
        levels = []
        for i in reversed(range(len(self.decoder))):
            skip = skips[i]
            up = _to_tokens(match_size(_to_maps(self.expand[i](t)), skip.shape[1:-1]))
            t = self.decoder[i](self.fuse[i](torch.cat([up, skip], dim=-1)))
            levels.append(t)
        return levels[::-1]  # token grids 1/4, 1/8, ...

    def _logits(self, t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        y = _to_maps(self.final_expand(self.norm_up(t)))
        return self.head(match_size(y, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, out_channels, *S) for input (N, in_channels, *S)."""
        return self._logits(self._decode(x)[0], x.shape[2:])

    def forward_with_aux(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Main logits, then (with ``deep_supervision``) logits on the decoder token grids at
        1/8, 1/16, ... (sizes ``ceil(S / (2 * patch))``, ``ceil(S / (4 * patch))``, ...)."""
        levels = self._decode(x)
        outs = [self._logits(levels[0], x.shape[2:])]
        if self.deep_supervision:
            outs += [_to_maps(h(t)) for h, t in zip(self.aux_heads, levels[1:])]
        return outs


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@register_seg_model("swin_unet")
def swin_unet(*, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> SwinUNet:
    """Swin-UNet factory (see :class:`SwinUNet`).

    Default parameter counts (1 in, 2 out): 2D 6.83 M, 3D 7.74 M (embed_dim 48; the published
    Swin-UNet with embed_dim 96 has about 27 M).
    """
    return SwinUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
