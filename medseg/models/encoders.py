"""Tile encoders for whole-slide features: ResNet-style CNNs (plain torch, or MONAI's ResNet), the
ResNet-50 truncated after ``layer3`` of CLAM (:mod:`.resnet50`) and ViT-S/16, ViT-B/16
(:mod:`.vit`, the backbone of DINO-style pathology encoders).

Every encoder maps tiles ``(B, 3, H, W)`` (already normalised floats) to features ``(B, C)``
and exposes ``feature_dim``. Weights come from a user-given file (:func:`load_weights`,
safetensors preferred, ``.pt``/``.pth`` read with ``weights_only=True``) or from BCL fine-tuning.
Checkpoints in the published layouts load as users have them (:func:`load_checkpoint`): a
``state_dict`` / ``model`` container is unwrapped, a ``module.`` / ``model.`` / ``backbone.``
prefix on every key stripped, keys of the full network that the encoder leaves out (its
``checkpoint_ignore``, e.g. ResNet-50's ``layer4.*`` and ``fc.*``, a ViT's ``head.*``) skipped and
reported; every parameter of the encoder must be in the file.

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
from medseg.models.resnet50 import ResNet50Trunc
from medseg.models.vit import VisionTransformer
from medseg.registry import Registry
from medseg.weights import state_mismatch

__all__ = ["TileResNet", "create_encoder", "encoder_names", "load_weights", "load_checkpoint", "read_state_dict",
           "save_weights", "encoder_info", "ENCODER_NAMES", "TILE_ENCODERS"]

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


@TILE_ENCODERS.register("resnet50_trunc")
def resnet50_trunc(**kw: Any) -> nn.Module:
    """ResNet-50 up to ``layer3`` (1024 features; CLAM's default; torchvision parameter names)."""
    return ResNet50Trunc(**kw)


@TILE_ENCODERS.register("vit_small_patch16")
def vit_small_patch16(**kw: Any) -> nn.Module:
    """ViT-S/16: 384 features, the CLS token (timm ``vit_small_patch16_224`` parameter names)."""
    return VisionTransformer(embed_dim=384, depth=12, heads=6, **kw)


@TILE_ENCODERS.register("vit_base_patch16")
def vit_base_patch16(**kw: Any) -> nn.Module:
    """ViT-B/16: 768 features, the CLS token (timm ``vit_base_patch16_224`` parameter names)."""
    return VisionTransformer(embed_dim=768, depth=12, heads=12, **kw)


ENCODER_NAMES = tuple(TILE_ENCODERS.names())  # the built-in encoders


def encoder_names() -> list[str]:
    return TILE_ENCODERS.names()


def encoder_info(model: nn.Module) -> dict[str, Any]:
    """What an encoder expects: ``feature_dim``, and ``input_size`` (px) and ``mpp`` (um/px) of the
    tiles it was trained on where it declares them (None otherwise)."""
    return {"feature_dim": int(getattr(model, "feature_dim", 0)), "input_size": getattr(model, "input_size", None),
            "mpp": getattr(model, "mpp", None)}


def create_encoder(name: str, *, weights: str | Path | None = None, **kw: Any) -> nn.Module:
    """Build a registered encoder, optionally loading ``weights`` (safetensors or .pt/.pth state dict)."""
    if name not in TILE_ENCODERS:
        raise InputError(f"unknown tile encoder '{name}' (known: {', '.join(encoder_names())})", code="bad_encoder")
    enc = TILE_ENCODERS.create(name, **kw)
    if weights is not None:
        load_weights(enc, weights)
    return enc


_CONTAINERS = ("state_dict", "model", "model_state_dict", "teacher")
_PREFIXES = ("module.", "model.", "backbone.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a torch pickle read with ``weights_only=True``
    (a ``state_dict`` / ``model`` / ``teacher`` container unwrapped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such weights file", path=p, code="missing")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types
        from medseg.errors import unpickle_reason

        raise InputError(f"cannot read weights ({unpickle_reason(exc)})", path=p, code="bad_weights") from None
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _CONTAINERS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict) or not sd:
        raise InputError("cannot read weights: no state dict (name -> tensor) in the file", path=p, code="bad_weights")
    return {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(sd: dict[str, torch.Tensor], own: list[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for pre in _PREFIXES:
            if sd and all(k.startswith(pre) for k in sd) and not all(k.startswith(pre) for k in own):
                sd = {k[len(pre):]: v for k, v in sd.items()}
                changed = True
    return sd


def load_checkpoint(model: nn.Module, path: str | Path, *, prefix: str = "") -> dict[str, Any]:
    """Load a checkpoint in a published layout into ``model``; every parameter and buffer of the
    model must be in the file with its shape (``num_batches_tracked``, absent from older
    torchvision files, excepted), keys under the model's ``checkpoint_ignore`` prefixes are skipped,
    any other key left over is an error. Returns ``{"loaded": n, "ignored": [...]}``."""
    sd = read_state_dict(path)
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = model.state_dict()
    sd = _strip_prefixes(sd, list(own))
    skip = tuple(getattr(model, "checkpoint_ignore", ()))
    ignored = sorted(k for k in sd if skip and k.startswith(skip))
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}
    problem = state_mismatch(own, sd, optional=("num_batches_tracked",))
    if problem:
        raise InputError(f"weights do not fit this encoder: {problem}", path=path, code="bad_weights")
    model.load_state_dict(sd, strict=False)
    return {"loaded": len(sd), "ignored": ignored}


def load_weights(model: nn.Module, path: str | Path, *, prefix: str = "") -> nn.Module:
    """:func:`load_checkpoint`, returning the model; skipped keys are logged."""
    import logging

    rep = load_checkpoint(model, path, prefix=prefix)
    if rep["ignored"]:
        logging.getLogger("medseg.models").info("%s: %d keys not part of the encoder skipped (%s ...)",
                                                Path(path).name, len(rep["ignored"]), rep["ignored"][0])
    return model


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    from medseg.fsutil import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return Path(path)
