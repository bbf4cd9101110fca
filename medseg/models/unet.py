"""U-Net (Ronneberger et al. 2015) in the nnU-Net style: 2D or 3D, strided-conv downsampling,
transposed-conv upsampling, instance or batch norm, optional residual units and deep supervision.

Any input size works: a strided conv maps ``n`` voxels to ``ceil(n / 2)``, and each upsampled
decoder map is cropped to its skip connection, so the output has exactly the input's size.

>>> import torch
>>> net = UNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 8, 16))
>>> net(torch.zeros(1, 1, 35, 21)).shape
torch.Size([1, 3, 35, 21])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import medseg.models.blocks as blocks
from medseg.errors import ConfigError
from medseg.models.seg_registry import register_seg_model


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    Parameters
    ----------
    spatial_dims, in_channels, out_channels
        2 or 3; channels of the input image and of the output logits.
    features
        Channels per resolution level, highest resolution first; ``len(features)`` levels means
        ``len(features) - 1`` downsamplings.
    strides
        Downsampling stride into each level below the first (``len(features) - 1`` entries; an int
        or one int per axis, e.g. ``(1, 2, 2)`` to keep thick CT slices). Default 2 everywhere.
    kernels
        Convolution kernel of each level (``len(features)`` entries; an int or one int per axis, e.g.
        ``(1, 3, 3)`` on thick-slice levels, as ``medseg plan`` proposes for anisotropic data).
        Default 3 everywhere.
    norm
        ``"instance"`` (default), ``"batch"``, ``"group"`` or ``"none"``.
    residual
        Residual units (ResNet basic blocks) instead of plain double convs.
    deep_supervision
        Adds 1x1 heads on the decoder levels below full resolution; their logits come from
        :meth:`forward_with_aux`.

    Shapes: input (N, in_channels, *S) -> logits (N, out_channels, *S).
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] = (16, 32, 64, 128, 256),
                 strides: Sequence[int | Sequence[int]] | None = None, norm: str = "instance",
                 residual: bool = False, deep_supervision: bool = False,
                 kernels: Sequence[int | Sequence[int]] | None = None):
        super().__init__()
        d = self.spatial_dims = blocks.check_dims(spatial_dims, model="unet")
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ConfigError(f"unet: features needs at least 2 levels, got {features}")
        if strides is None:
            strides = [2] * (len(features) - 1)
        if len(strides) != len(features) - 1:
            raise ConfigError(f"unet: strides needs {len(features) - 1} entries (one per downsampling), "
                              f"got {list(strides)}")
        self.strides = [blocks.as_tuple(s, d, name="unet strides") for s in strides]
        if kernels is None:
            kernels = [3] * len(features)
        if len(kernels) != len(features):
            raise ConfigError(f"unet: kernels needs {len(features)} entries (one per level), got {list(kernels)}")
        ks = [blocks.as_tuple(k, d, name="unet kernels") for k in kernels]
        # cumulative downsampling factor of each level, per axis
        self.factors = [(1,) * d]
        for st in self.strides:
            self.factors.append(tuple(a * b for a, b in zip(self.factors[-1], st)))
        self.encoder = nn.ModuleList(
            [blocks.ConvUnit(d, in_channels, features[0], norm=norm, residual=residual, kernel=ks[0])]
            + [blocks.ConvUnit(d, features[i - 1], features[i], stride=self.strides[i - 1], norm=norm,
                        residual=residual, kernel=ks[i]) for i in range(1, len(features))])
        # decoder level i (from the bottom up) brings features[i + 1] up to features[i]
        self.up = nn.ModuleList(
            [blocks.conv_transpose_nd(d)(features[i + 1], features[i], self.strides[i], stride=self.strides[i],
                                  bias=False) for i in range(len(features) - 1)])
        self.decoder = nn.ModuleList(
            [blocks.ConvUnit(d, 2 * features[i], features[i], norm=norm, residual=residual, kernel=ks[i])
             for i in range(len(features) - 1)])
        self.head = blocks.conv_nd(d)(features[0], out_channels, 1)
        self.deep_supervision = bool(deep_supervision)
        if self.deep_supervision:
            self.aux_heads = nn.ModuleList(
                [blocks.conv_nd(d)(features[i], out_channels, 1) for i in range(1, len(features) - 1)])
        blocks.init_conv_weights(self)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        blocks.check_input(x, self.spatial_dims, model="unet")
        x = blocks.pad_single_voxel_bottleneck(x, self.factors[-1])
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        levels = []
        for i in reversed(range(len(self.decoder))):
            skip = skips[i]
            x = blocks.match_size(self.up[i](x), skip.shape[2:])
            x = self.decoder[i](torch.cat([x, skip], dim=1))
            levels.append(x)
        return levels[::-1]  # highest resolution first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, out_channels, *S) for input (N, in_channels, *S)."""
        return blocks.match_size(self.head(self._decode(x)[0]), x.shape[2:])

    def forward_with_aux(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Main logits, then (with ``deep_supervision``) lower-resolution logits, highest first.

        Entry ``k`` has spatial size ``ceil(S / prod(strides[:k]))`` (e.g. ``S``, ``S/2``, ``S/4``, ...);
        downsample the target (nearest) to each entry's ``shape[2:]`` for the loss.
        """
        aux_heads = self.aux_heads if self.deep_supervision else ()
        return blocks.level_logits(self._decode(x), self.head, aux_heads, factors=self.factors, size=x.shape[2:])


@register_seg_model("unet")
def unet(*, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> UNet:
    """U-Net factory (see :class:`UNet`).

    Default parameter counts (features (16, 32, 64, 128, 256), plain units, 1 in, 2 out):
    2D 1.94 M, 3D 5.65 M; with ``residual=True`` 2D 2.03 M, 3D 5.73 M.
    """
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
