"""Shared building blocks: N-d convolutions, normalisation, residual conv units, size helpers.

Every block is parametrised by ``spatial_dims`` (2 or 3) so one architecture file serves both.

>>> import torch
>>> block = ConvUnit(2, 1, 8, norm="instance", residual=True)
>>> block(torch.zeros(1, 1, 5, 7)).shape
torch.Size([1, 8, 5, 7])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

NORMS = ("instance", "batch", "group", "none")


def check_dims(spatial_dims: int, *, model: str) -> int:
    """Validate ``spatial_dims`` (2 or 3) for model ``model``."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"{model}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_input(x: torch.Tensor, spatial_dims: int, *, model: str) -> None:
    """Raise a clear error when ``x`` is not (N, C, *spatial) with ``spatial_dims`` axes."""
    if x.ndim != spatial_dims + 2:
        hint = " (run 2D models on volumes with medseg.models.slicewise.SliceWise)" if spatial_dims == 2 else ""
        axes = "D, H, W" if spatial_dims == 3 else "H, W"
        raise ConfigError(f"{model}: expected a {spatial_dims + 2}-d tensor (N, C, {axes}), "
                          f"got shape {tuple(x.shape)}{hint}")


def as_tuple(value: int | Sequence[int], n: int, *, name: str) -> tuple[int, ...]:
    """``3 -> (3, 3)``; a sequence must have length ``n``."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ConfigError(f"{name} needs {n} values (one per spatial axis), got {list(value)}")
    return out


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """Normalisation over feature maps (N, C, *spatial).

    ``instance``: per-sample, per-channel (affine), the nnU-Net default for small batches;
    ``batch``: batch statistics; ``group``: 8 groups (or fewer when ``channels`` is small);
    ``none``: identity.
    """
    if norm == "instance":
        cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls(channels, affine=True)
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm '{norm}' (use one of {', '.join(NORMS)})")


def activation() -> nn.Module:
    """LeakyReLU(0.01), as in nnU-Net."""
    return nn.LeakyReLU(0.01, inplace=True)


class ConvNormAct(nn.Sequential):
    """conv(k, stride) -> norm -> LeakyReLU; 'same' padding so spatial size is ``ceil(n / stride)``."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, *, kernel: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, norm: str = "instance", act: bool = True):
        ks = as_tuple(kernel, spatial_dims, name="kernel")
        layers: list[nn.Module] = [
            conv_nd(spatial_dims)(in_ch, out_ch, ks, stride=stride, padding=tuple(k // 2 for k in ks),
                                  bias=norm == "none"),
            norm_layer(norm, spatial_dims, out_ch),
        ]
        if act:
            layers.append(activation())
        super().__init__(*layers)


class ConvUnit(nn.Module):
    """Two 3x3 convolutions; the first may stride. With ``residual`` a projected identity is added
    before the last activation (a ResNet basic block), otherwise a plain double conv.

    Input (N, in_ch, *S) -> output (N, out_ch, *ceil(S / stride)).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, *, stride: int | Sequence[int] = 1,
                 norm: str = "instance", residual: bool = False, kernel: int | Sequence[int] = 3):
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_ch, out_ch, kernel=kernel, stride=stride, norm=norm)
        self.conv2 = ConvNormAct(spatial_dims, out_ch, out_ch, kernel=kernel, norm=norm, act=not residual)
        self.residual = residual
        if residual:
            strided = any(s != 1 for s in as_tuple(stride, spatial_dims, name="stride"))
            if strided or in_ch != out_ch:
                self.skip: nn.Module = ConvNormAct(spatial_dims, in_ch, out_ch, kernel=1, stride=stride,
                                                   norm=norm, act=False)
            else:
                self.skip = nn.Identity()
            self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.residual:
            y = self.act(y + self.skip(x))
        return y


def match_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop (from the end) or zero-pad (at the end) the spatial axes of ``x`` (N, C, *S) to ``size``."""
    size = tuple(int(s) for s in size)
    cur = tuple(x.shape[2:])
    if cur == size:
        return x
    slices = (slice(None), slice(None)) + tuple(slice(0, min(c, s)) for c, s in zip(cur, size))
    x = x[slices]
    pad: list[int] = []
    for c, s in zip(reversed(x.shape[2:]), reversed(size)):
        pad += [0, s - c]
    if any(pad):
        x = F.pad(x, pad)
    return x


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> torch.Tensor:
    """Zero-pad spatial axes of ``x`` (N, C, *S) at the end so each is a multiple of ``multiple``."""
    size = [-(-int(s) // int(m)) * int(m) for s, m in zip(x.shape[2:], multiple)]
    return match_size(x, size)


def pad_single_voxel_bottleneck(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, *S) at the end to ``factor + 1`` per axis when the coarsest level
    (``ceil(S / factor)``) would be a single voxel, where instance and batch norm are undefined.
    Larger inputs are returned unchanged."""
    coarse = math.prod(-(-int(s) // int(f)) for s, f in zip(x.shape[2:], factor))
    if coarse > 1:
        return x
    return match_size(x, [max(int(s), int(f) + 1) for s, f in zip(x.shape[2:], factor)])


def level_logits(levels: Sequence[torch.Tensor], head: nn.Module, aux_heads: Sequence[nn.Module], *,
                 factors: Sequence[Sequence[int]], size: Sequence[int]) -> list[torch.Tensor]:
    """``forward_with_aux`` of a CNN decoder: ``head`` on the highest-resolution decoder level, then
    ``aux_heads[k]`` (none without deep supervision) on level ``k + 1``; entry ``k`` is matched to
    ``ceil(size / factors[k])``."""
    outs = [head(levels[0])] + [h(lv) for h, lv in zip(aux_heads, levels[1:])]
    return [match_size(o, ceil_div(size, f)) for o, f in zip(outs, factors)]


def ceil_div(size: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    """``ceil(size / factor)`` per axis."""
    return tuple(-(-int(s) // int(f)) for s, f in zip(size, factor))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` (train only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``.

    >>> count_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def init_conv_weights(model: nn.Module, *, negative_slope: float = 0.01) -> None:
    """He (Kaiming) normal initialisation for every convolution, zero biases (as nnU-Net). Modules on
    torch's ``meta`` device (a size probe) hold no values and are skipped: drawing "random" meta values
    imports torch's compiler stack, 1.6 s of start-up for nothing."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
