"""Window attention utilities of Swin-UNet, checked by hand and against a naive reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from medseg.models.swin import (
    PatchExpand,
    PatchMerging,
    SwinBlock,
    effective_window,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def test_window_partition_by_hand_and_roundtrip():
    x = torch.arange(16.0).view(1, 4, 4, 1)
    w = window_partition(x, (2, 2))
    assert w.shape == (1, 4, 4, 1)
    assert w[0, 1, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0]   # top-right window
    assert w[0, 2, :, 0].tolist() == [8.0, 9.0, 12.0, 13.0]  # bottom-left window
    y = torch.randn(2, 4, 6, 9, 5)
    torch.testing.assert_close(window_reverse(window_partition(y, (2, 3, 3)), (2, 3, 3), (4, 6, 9)), y)


def test_relative_position_index_by_hand():
    # tokens (0,0), (0,1), (1,0), (1,1); index = (dy + 1) * 3 + (dx + 1)
    assert relative_position_index((2, 2), (2, 2)).tolist() == [
        [4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    # a window shrunk to (1, 2) reuses the same table
    assert relative_position_index((1, 2), (2, 2)).tolist() == [[4, 3], [5, 4]]


def test_shifted_window_mask_by_hand():
    # 4x4 grid, window 2, shift 1: per-axis regions [0, 0, 1, 2]; windows (0,0) one region,
    # (0,1) and (1,0) two regions of 2 tokens, (1,1) four single tokens
    m = shifted_window_mask((4, 4), (2, 2), (1, 1))
    assert m.shape == (4, 4, 4)
    assert m.sum(dim=(1, 2)).tolist() == [16, 8, 8, 4]


def test_effective_window():
    assert effective_window((16, 5, 3), (4, 7, 4), (2, 3, 2)) == ((4, 5, 3), (2, 0, 0))


def _reference_block(block: SwinBlock, x: torch.Tensor, window, shift) -> torch.Tensor:
    """Naive SwinBlock: full attention over all tokens, allowed only within the same (un-rolled)
    shifted window, i.e. equal ``floor((p - shift) / window)`` on every axis, plus the relative
    position bias of the offset. Grid must be a multiple of the window."""
    b, *grid, c = x.shape
    attn = block.attn
    h = attn.num_heads
    coords = list(itertools.product(*[range(g) for g in grid]))
    group = torch.tensor([[(p - s) // w for p, s, w in zip(q, shift, window)] for q in coords])
    allowed = (group[:, None] == group[None]).all(-1)
    pos = torch.tensor(coords)
    rel = pos[:, None] - pos[None]  # (L, L, d)
    flat = torch.zeros(rel.shape[:2], dtype=torch.long)
    for axis, w in enumerate(window):
        flat = flat * (2 * w - 1) + rel[..., axis] + w - 1
    bias = attn.bias_table[flat.clamp(0, attn.bias_table.shape[0] - 1)].permute(2, 0, 1)  # (h, L, L)
    y = block.norm1(x).reshape(b, -1, c)
    q, k, v = attn.qkv(y).view(b, -1, 3, h, c // h).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / (c // h) ** 0.5 + bias
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)).view(x.shape)
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("grid,window,shifted", [
    ((6, 4), (2, 2), True), ((6, 4), (2, 2), False), ((4, 6, 4), (2, 3, 2), True), ((4, 4), (4, 4), False),
])
def test_swin_block_matches_naive_reference(grid, window, shifted):
    torch.manual_seed(0)
    block = SwinBlock(8, 2, window, shifted=shifted).eval()
    with torch.no_grad():
        block.attn.bias_table.normal_()
        x = torch.randn(2, *grid, 8)
        shift = tuple(w // 2 for w in window) if shifted else (0,) * len(window)
        torch.testing.assert_close(block(x), _reference_block(block, x, window, shift), rtol=1e-4, atol=1e-5)


def test_swin_block_pads_odd_grids():
    block = SwinBlock(8, 2, (3, 3, 3), shifted=True)
    x = torch.randn(1, 5, 7, 2, 8, requires_grad=True)
    y = block(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


def test_patch_merging_is_local():
    """Output token (i, j) depends only on input tokens (2i..2i+1, 2j..2j+1); odd grids are padded."""
    merge = PatchMerging(4, 2)
    x = torch.randn(1, 5, 3, 4, requires_grad=True)
    y = merge(x)
    assert y.shape == (1, 3, 2, 8)
    (y[0, 1, 0] * torch.randn(8)).sum().backward()
    touched = (x.grad[0].abs().sum(-1) > 0).nonzero().tolist()
    assert touched == [[2, 0], [2, 1], [3, 0], [3, 1]]


def test_patch_expand_is_local():
    expand = PatchExpand(8, 3, (2, 4))
    x = torch.randn(1, 3, 2, 8, requires_grad=True)
    y = expand(x)
    assert y.shape == (1, 6, 8, 3)
    (y[0, 3, 5] * torch.randn(3)).sum().backward()  # row 3 // 2 = 1, column 5 // 4 = 1 (random
    # weights: the sum of a LayerNorm output is constant)
    assert (x.grad[0].abs().sum(-1) > 0).nonzero().tolist() == [[1, 1]]
