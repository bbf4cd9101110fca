"""Factories of the training loop: torch flags, model (with a shape check), optimiser, learning
rate schedule, DDP/compile wrapping and the DataLoader."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from medseg.errors import ConfigError

log = logging.getLogger("medseg.training")


def setup_torch(t: dict[str, Any], device: torch.device) -> None:
    """Threads and determinism flags from the ``training`` section."""
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    if t["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"


class AuxOutputs(nn.Module):
    """Makes ``forward`` return ``model.forward_with_aux(x)`` (a list, highest resolution first), so
    DDP and torch.compile see the deep-supervision outputs through an ordinary forward call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_aux(x)


def build_model(name: str, kwargs: dict[str, Any], *, patch: Sequence[int], device: torch.device,
                deep_supervision: bool | str, slice_axis: int | None = None) -> tuple[nn.Module, bool]:
    """Create the model and run one patch through it, so a patch size the architecture cannot take
    or wrong kwargs fail now with a clear message. Returns ``(model on device, deep_supervision)``.

    With ``slice_axis`` (``kwargs["spatial_dims"] == 2``) the 2D model is wrapped in
    :class:`~medseg.models.slicewise.SliceWise` along that axis, so it takes the same 3D patches;
    the 2D network itself is the wrapper's ``.model``."""
    from medseg.models import create_seg_model
    from medseg.models.slicewise import SliceWise

    try:
        net = create_seg_model(name, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model '{name}' does not accept these model.* keys: {exc}") from None
    has_aux = callable(getattr(net, "forward_with_aux", None))
    if slice_axis is not None:
        net = SliceWise(net, axis=slice_axis, chunk_size=None)   # all slices of a batch in one 2D forward pass
    if deep_supervision == "auto":
        deep_supervision = has_aux
    elif deep_supervision and not has_aux:
        raise ConfigError(f"training.deep_supervision is on but model '{name}' has no forward_with_aux(); set it "
                          "to auto or false")
    net.to(device)
    x = torch.zeros((1, kwargs["in_channels"], *patch), device=device)
    net.eval()
    try:
        with torch.no_grad():
            out = net.forward_with_aux(x)[0] if deep_supervision else net(x)
    except RuntimeError as exc:
        raise ConfigError(f"model '{name}' cannot process a patch of {list(patch)} voxels ({str(exc)[:200]}); "
                          "choose plan.patch_size as a multiple of the model's downsampling factor "
                          "(plan.divisor)") from None
    net.train()
    want = (1, kwargs["out_channels"], *patch)
    if tuple(out.shape) != want:
        raise ConfigError(f"model '{name}' returns shape {tuple(out.shape)} for a patch of {list(patch)}, expected "
                          f"{want}; choose plan.patch_size as a multiple of the model's downsampling factor")
    n_params = sum(p.numel() for p in net.parameters())
    log.info("model %s: %.2f M parameters, deep supervision %s", name, n_params / 1e6, bool(deep_supervision))
    return net, bool(deep_supervision)


def make_optimizer(net: nn.Module, t: dict[str, Any]) -> torch.optim.Optimizer:
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(net.parameters(), lr=t["lr"], momentum=t["momentum"], nesterov=True,
                               weight_decay=t["weight_decay"])
    return torch.optim.AdamW(net.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])


def lr_at(step: int, *, total: int, base: float, warmup: int, schedule: str, power: float = 0.9) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up from ``base/100`` over ``warmup`` steps, then ``poly`` (``(1 - f) ** power``),
    ``cosine`` (``(1 + cos(pi f)) / 2``) or ``constant``, with ``f`` the fraction of the
    remaining steps done.

    >>> lr_at(0, total=10, base=1.0, warmup=0, schedule="poly")
    1.0
    >>> lr_at(5, total=10, base=1.0, warmup=0, schedule="cosine")
    0.5
    """
    if step < warmup:
        return base * (0.01 + 0.99 * step / warmup)
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "poly":
        return base * (1.0 - frac) ** power
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * frac))
    return base


def wrap_for_training(net: nn.Module, *, deep_supervision: bool, t: dict[str, Any], device: torch.device, dinfo):
    """The module the loop calls: aux-output wrapper, channels_last, DDP, then torch.compile."""
    module: nn.Module = AuxOutputs(net) if deep_supervision else net
    cl = t["channels_last"]
    if (device.type == "cuda" if cl == "auto" else bool(cl)):
        net.to(memory_format=torch.channels_last_3d)
    if dinfo.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    if t["compile"]:
        module = torch.compile(module)
    return module


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset, sampler, t: dict[str, Any], device: torch.device) -> DataLoader:
    """DataLoader over ``sampler``'s indices; a private generator keeps the global torch RNG untouched
    (so resuming gives the same dropout/initialisation stream as an uninterrupted run)."""
    nw = int(t["num_workers"])
    return DataLoader(dataset, batch_size=t["batch_size"], sampler=sampler, num_workers=nw,
                      pin_memory=device.type == "cuda", persistent_workers=nw > 0,
                      worker_init_fn=_worker_init if nw > 0 else None, drop_last=False,
                      generator=torch.Generator().manual_seed(0), prefetch_factor=4 if nw > 0 else None)
