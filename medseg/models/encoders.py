"""Tile encoders for whole-slide features: ResNet-style CNNs (plain torch, or MONAI's ResNet).

Every encoder maps tiles ``(B, 3, H, W)`` (already normalised floats) to features ``(B, C)``
and exposes ``feature_dim``. Weights come from a user-given file (:func:`load_weights`,
safetensors preferred, ``.pt`` read with ``weights_only=True``) or from BCL fine-tuning.

>>> import torch
>>> enc = create_encoder("tile_resnet_tiny")
>>> enc(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.errors import InputError
from medseg.registry import Registry

__all__ = ["TileResNet", "create_encoder", "encoder_names", "load_weights", "save_weights", "ENCODER_NAMES",
           "TILE_ENCODERS"]

# Tile encoders: tiles (B, 3, H, W) -> features (B, feature_dim); built by name with create_encoder.
TILE_ENCODERS = Registry("tile encoder")


class _Block(nn.Module):
    """Basic residual block: two 3x3 convolutions with batch norm; 1x1 projection on shape change."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class TileResNet(nn.Module):
    """ResNet (He et al. 2016, basic blocks) ending in global average pooling.

    Parameters
    ----------
    blocks : residual blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    widths : channels per stage; ``feature_dim`` is the last one.
    stem_stride : 4 for large tiles (7x7 stride-2 conv + max-pool, as in ResNet), 1 for tiny tiles.
    """

    def __init__(self, *, blocks: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 in_channels: int = 3, stem_stride: int = 4):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError("blocks and widths need the same length")
        w0 = widths[0]
        if stem_stride == 4:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w0, 7, 2, 3, bias=False), nn.BatchNorm2d(w0),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0),
                                      nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = w0
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(_Block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = int(widths[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(B, C, h, w)``."""
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))


class _MonaiResNet(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        from monai.networks.nets import resnet

        self.net = getattr(resnet, f"resnet{depth}")(spatial_dims=2, n_input_channels=3, feed_forward=False)
        self.feature_dim = 512 if depth in (10, 18, 34) else 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@TILE_ENCODERS.register("tile_resnet18")
def tile_resnet18(**kw: Any) -> TileResNet:
    """ResNet-18 layout, 512 features; for 224-256 px tiles."""
    return TileResNet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kw)


@TILE_ENCODERS.register("tile_resnet_small")
def tile_resnet_small(**kw: Any) -> TileResNet:
    """A 4-stage, 8-block ResNet with half the widths (256 features): CPU-friendly."""
    return TileResNet(blocks=(2, 2, 2, 2), widths=(32, 64, 128, 256), **kw)


@TILE_ENCODERS.register("tile_resnet_tiny")
def tile_resnet_tiny(**kw: Any) -> TileResNet:
    """Three stages of one block (16-32-64 channels, stride-1 stem) for tiny tiles (8-32 px)."""
    kw.setdefault("stem_stride", 1)
    return TileResNet(blocks=(1, 1, 1), widths=(16, 32, 64), **kw)


@TILE_ENCODERS.register("monai_resnet18")
def monai_resnet18(**kw: Any) -> nn.Module:
    """MONAI's 2D ResNet-18 without its classifier (512 features)."""
    return _MonaiResNet(18, **kw)


@TILE_ENCODERS.register("monai_resnet50")
def monai_resnet50(**kw: Any) -> nn.Module:
    """MONAI's 2D ResNet-50 without its classifier (2048 features)."""
    return _MonaiResNet(50, **kw)


ENCODER_NAMES = tuple(TILE_ENCODERS.names())  # the built-in encoders


def encoder_names() -> list[str]:
    return TILE_ENCODERS.names()


def create_encoder(name: str, *, weights: str | Path | None = None, **kw: Any) -> nn.Module:
    """Build a registered encoder, optionally loading ``weights`` (safetensors or .pt state dict)."""
    if name not in TILE_ENCODERS:
        raise InputError(f"unknown tile encoder '{name}' (known: {', '.join(encoder_names())})", code="bad_encoder")
    enc = TILE_ENCODERS.create(name, **kw)
    if weights is not None:
        load_weights(enc, weights)
    return enc


def load_weights(model: nn.Module, path: str | Path, *, prefix: str = "") -> nn.Module:
    """Load a state dict from ``path`` into ``model`` (strict); ``prefix`` selects a sub-dict."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such weights file", path=p, code="missing")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as exc:  # corrupt files raise many types
        from medseg.errors import unpickle_reason

        raise InputError(f"cannot read weights ({unpickle_reason(exc)})", path=p, code="bad_weights") from None
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise InputError(f"weights do not fit this encoder: {str(exc)[:300]}", path=p, code="bad_weights") from None
    return model


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from medseg.fsutil import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return Path(path)
