"""Shifted-window attention for 2D and 3D token grids (Liu et al. 2021, Swin Transformer).

Tokens are channel-last: (B, *grid, C). A block partitions the grid into non-overlapping windows,
runs multi-head self-attention with a learned relative position bias inside each window, and
(every second block) cyclically shifts the grid by half a window first, masking attention between
tokens that were not neighbours before the shift.

Small or odd grids: along an axis whose grid is not larger than the window, the window shrinks to
the grid and that axis is not shifted (Swin does this for all axes at once; here per axis); other
axes are zero-padded to a multiple of the window and cropped back afterwards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.blocks import DropPath


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *grid, C) with grid divisible by ``window`` -> (B, num_windows, prod(window), C)."""
    b, *grid, c = x.shape
    d = len(grid)
    shape = [b]
    for g, w in zip(grid, window):
        shape += [g // w, w]
    x = x.view(*shape, c)
    perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
    return x.permute(perm).reshape(b, -1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, num_windows, prod(window), C) -> (B, *grid, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    d = len(grid)
    x = windows.view(b, *[g // w for g, w in zip(grid, window)], *window, c)
    perm = [0]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return x.permute(perm + [2 * d + 1]).reshape(b, *grid, c)


def relative_position_index(window: Sequence[int], max_window: Sequence[int]) -> torch.Tensor:
    """(N, N) index into a bias table of ``prod(2 * max_window - 1)`` rows, N = prod(window).

    Entry ``[i, j]`` encodes the offset ``coord_i - coord_j`` (each axis shifted by
    ``max_window - 1`` to be non-negative, then raveled in C order).
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (d, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, m in enumerate(max_window):
        index = index * (2 * m - 1) + rel[axis] + (m - 1)
    return index


def effective_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per axis: the window shrinks to the grid (and the shift drops) where the grid is not larger."""
    win = tuple(min(g, w) for g, w in zip(grid, window))
    sh = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
    return win, sh


@functools.lru_cache(maxsize=64)
def _cached_mask(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                 device: torch.device) -> torch.Tensor:
    return shifted_window_mask(grid, window, shift, device=device)


def shifted_window_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int],
                        device: torch.device | None = None) -> torch.Tensor:
    """Boolean (num_windows, N, N): True where two tokens of a shifted window may attend.

    ``grid`` is the (padded) grid, divisible by ``window``. After a cyclic shift by ``-shift`` each
    axis holds up to three regions ``[0, g - w)``, ``[g - w, g - s)``, ``[g - s, g)``; tokens attend
    only within the same region combination.
    """
    label = torch.zeros(tuple(grid), dtype=torch.long, device=device)
    for axis, (g, w, s) in enumerate(zip(grid, window, shift)):
        lab = torch.zeros(g, dtype=torch.long, device=device)
        if s > 0:
            lab[g - w:g - s] = 1
            lab[g - s:] = 2
        view = [1] * len(grid)
        view[axis] = g
        label = label * 3 + lab.view(view)
    m = window_partition(label[None, ..., None], window)[0, :, :, 0]  # (nW, N)
    return m[:, :, None] == m[:, None, :]


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with a relative position bias.

    Input (B, nW, N, C) -> (B, nW, N, C); ``window`` (<= ``max_window`` per axis) gives N.
    """

    def __init__(self, dim: int, num_heads: int, max_window: Sequence[int]):
        super().__init__()
        self.num_heads = num_heads
        self.max_window = tuple(max_window)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in self.max_window), num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def position_bias(self, window: Sequence[int]) -> torch.Tensor:
        """(heads, N, N) relative position bias for a window of size ``window``."""
        key = (tuple(window), self.bias_table.device)
        idx = self._index_cache.get(key)
        if idx is None:
            idx = relative_position_index(window, self.max_window).to(self.bias_table.device)
            self._index_cache[key] = idx
        n = idx.shape[0]
        return self.bias_table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
        b, nw, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)  # 3 x (B, nW, h, N, hd)
        bias = self.position_bias(window)  # (h, N, N)
        if mask is not None:  # (nW, N, N) -> (nW, h, N, N)
            bias = bias[None] + torch.zeros_like(mask, dtype=bias.dtype).masked_fill(~mask, float("-inf"))[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(y.transpose(2, 3).reshape(b, nw, n, c))


class SwinBlock(nn.Module):
    """``x + W-MSA(LN(x))`` then ``x + MLP(LN(x))`` on tokens (B, *grid, C); ``shifted`` selects
    SW-MSA (cyclic shift by half a window)."""

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], *, shifted: bool,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window) if shifted else (0,) * len(window)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[1:-1])
        d = len(grid)
        win, shift = effective_window(grid, self.window, self.shift)
        y = self.norm1(x)
        padded = tuple(-(-g // w) * w for g, w in zip(grid, win))
        if padded != grid:
            pad = [0, 0]
            for g, p in zip(reversed(grid), reversed(padded)):
                pad += [0, p - g]
            y = F.pad(y, pad)
        axes = tuple(range(1, d + 1))
        mask = None
        if any(shift):
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=axes)
            mask = _cached_mask(padded, win, shift, y.device)
        y = window_reverse(self.attn(window_partition(y, win), win, mask), win, padded)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=axes)
        if padded != grid:
            y = y[(slice(None),) + tuple(slice(0, g) for g in grid)]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x downsampling of tokens: concatenate each 2^d neighbourhood (zero-padding odd axes),
    LayerNorm, linear to ``2 * dim``. (B, *G, C) -> (B, *ceil(G / 2), 2C)."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 ** spatial_dims * dim)
        self.reduction = nn.Linear(2 ** spatial_dims * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *grid, c = x.shape
        if any(g % 2 for g in grid):
            pad = [0, 0]
            for g in reversed(grid):
                pad += [0, g % 2]
            x = F.pad(x, pad)
            grid = [g + g % 2 for g in grid]
        d = len(grid)
        shape = [b]
        for g in grid:
            shape += [g // 2, 2]
        x = x.view(*shape, c)
        perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
        x = x.permute(perm).reshape(b, *[g // 2 for g in grid], 2 ** d * c)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Upsampling of tokens by ``scale`` per axis: linear ``dim -> prod(scale) * out_dim``, then
    rearrange the channels into the new voxels and LayerNorm. (B, *G, dim) -> (B, *(G * scale), out_dim)."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(scale)
        self.out_dim = out_dim
        self.expand = nn.Linear(dim, math.prod(self.scale) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *grid, _ = x.shape
        d = len(grid)
        x = self.expand(x).view(b, *grid, *self.scale, self.out_dim)
        perm = [0]
        for i in range(d):
            perm += [1 + i, 1 + d + i]
        x = x.permute(perm + [2 * d + 1]).reshape(b, *[g * s for g, s in zip(grid, self.scale)], self.out_dim)
        return self.norm(x)
