"""Run a 2D network on a volume slice by slice, in training and in inference.

The slicing axis is the one with the coarsest spacing (thick CT/MRI slices), so each 2D slice
keeps the finest in-plane resolution:

>>> slicing_axis((5.0, 0.8, 0.8)), slicing_axis((1.0, 1.0, 1.0)), slicing_axis((0.7, 3.0, 0.7))
(0, 0, 1)

:class:`SliceWise` wraps a 2D model so it takes and returns (N, C, D, H, W) tensors like a 3D one;
optionally each slice sees its neighbours as extra input channels (2.5D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.errors import ConfigError


def slicing_axis(spacing_mm: Sequence[float], *, rel_tol: float = 1e-3) -> int:
    """Array axis (0 = z, 1 = y, 2 = x) with the largest spacing in mm.

    Spacings within ``rel_tol`` of the largest count as ties; ties go to the lowest axis, so an
    isotropic volume is sliced along z.
    """
    s = np.asarray(spacing_mm, dtype=np.float64)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigError(f"slicing_axis needs three positive spacings (z, y, x) in mm, got {list(spacing_mm)}")
    return int(np.flatnonzero(s >= s.max() * (1.0 - rel_tol))[0])


class SliceWise(nn.Module):
    """Apply a 2D model to every slice of a volume along one axis.

    Parameters
    ----------
    model2d
        A 2D network mapping (B, C * (2 * context + 1), h, w) to (B, out, h, w).
    axis
        Spatial axis to slice along: 0 (z), 1 (y) or 2 (x) of the (D, H, W) volume.
    context
        Neighbouring slices on each side stacked as extra channels (replicated at the ends);
        0 = plain 2D. For slice ``s`` the channels are slices ``s - context ... s + context``,
        each with all ``C`` input channels, in that order.
    chunk_size
        Slices per call of the 2D model (bounds memory); None = all slices at once.

    Shapes: (N, C, D, H, W) -> (N, out, D, H, W).
    """

    def __init__(self, model2d: nn.Module, *, axis: int, context: int = 0, chunk_size: int | None = 64):
        super().__init__()
        if axis not in (0, 1, 2):
            raise ConfigError(f"SliceWise: axis must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
        if context < 0 or (chunk_size is not None and chunk_size < 1):
            raise ConfigError(f"SliceWise: context must be >= 0 and chunk_size >= 1, got {context}, {chunk_size}")
        self.model = model2d
        self.axis = int(axis)
        self.context = int(context)
        self.chunk_size = chunk_size

    @property
    def deep_supervision(self) -> bool:
        """Whether the wrapped 2D model returns aux outputs from :meth:`forward_with_aux`."""
        return bool(getattr(self.model, "deep_supervision", False))

    def _slices(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Slices [start, stop) of all samples as a 2D batch ((stop - start) * N, C', h, w)."""
        xs = x.movedim(2 + self.axis, 1)  # (N, S, C, h, w)
        n, s = xs.shape[:2]
        idx = torch.arange(start, stop, device=x.device)
        if self.context:
            offs = torch.arange(-self.context, self.context + 1, device=x.device)
            idx = (idx[:, None] + offs[None]).clamp_(0, s - 1).reshape(-1)
        sel = xs[:, idx]  # (N, k * (2c + 1), C, h, w)
        return sel.reshape(n * (stop - start), -1, *sel.shape[-2:])

    def _run(self, x: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> list[torch.Tensor]:
        if x.ndim != 5:
            raise ConfigError(f"SliceWise expects a (N, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        n, s = x.shape[0], x.shape[2 + self.axis]
        step = s if self.chunk_size is None else self.chunk_size
        parts: list[list[torch.Tensor]] = []
        for start in range(0, s, step):
            stop = min(s, start + step)
            out = fn(self._slices(x, start, stop))
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            # ((stop - start) * N, out, h, w) -> (N, stop - start, out, h, w)
            parts.append([o.reshape(n, stop - start, *o.shape[1:]) for o in outs])
        return [torch.cat(level, dim=1).movedim(1, 2 + self.axis) for level in zip(*parts)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, out, D, H, W) for a volume batch (N, C, D, H, W)."""
        return self._run(x, self.model)[0]

    def forward_with_aux(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 2D model's :meth:`forward_with_aux` outputs, each restacked along the slicing axis
        (the slicing axis keeps its full size; the in-plane axes are the 2D model's aux sizes)."""
        return self._run(x, self.model.forward_with_aux)


def slicewise_model(name: str, *, axis: int, in_channels: int, out_channels: int, context: int = 0,
                    chunk_size: int | None = 64, **kwargs: Any) -> SliceWise:
    """Build the registered 2D model ``name`` for ``in_channels * (2 * context + 1)`` input channels
    and wrap it in :class:`SliceWise`.

    >>> net = slicewise_model("unet", axis=0, in_channels=1, out_channels=2, context=1, features=(4, 8))
    >>> net(torch.zeros(1, 1, 3, 9, 10)).shape
    torch.Size([1, 2, 3, 9, 10])
    """
    from medseg.models import create_seg_model

    model2d = create_seg_model(name, spatial_dims=2, in_channels=in_channels * (2 * context + 1),
                           out_channels=out_channels, **kwargs)
    return SliceWise(model2d, axis=axis, context=context, chunk_size=chunk_size)
