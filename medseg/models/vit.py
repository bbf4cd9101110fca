"""Vision Transformer (Dosovitskiy et al. 2021) with 16-px patches, as a tile encoder: the CLS
token after the final layer norm. ViT-S/16 (384 wide, 6 heads) and ViT-B/16 (768 wide, 12 heads)
are the backbones of the public DINO-style pathology encoders.

Parameter names follow timm's ``vit_small_patch16_224`` / ``vit_base_patch16_224`` (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1/fc2``, ``norm``); a classifier ``head.*`` in a checkpoint is
not part of the encoder (:attr:`VisionTransformer.checkpoint_ignore`). Tiles of another size than
224 px get the position embeddings of the 14 x 14 grid interpolated (bicubic) to their grid.

>>> import torch
>>> VisionTransformer(embed_dim=32, depth=1, heads=2)(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisionTransformer"]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block (layer norm eps 1e-6, as timm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D)


class VisionTransformer(nn.Module):
    """ViT encoder returning the normalised CLS token ``(B, embed_dim)``."""

    input_size = 224
    mpp = 0.5  # the public pathology ViTs were trained on 224-px tiles at 20x (about 0.5 um/px)
    checkpoint_ignore = ("head.", "fc_norm.", "head_drop.")

    def __init__(self, *, embed_dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 16,
                 img_size: int = 224, mlp_ratio: float = 4.0):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of heads {heads}")
        self.patch, self.grid = patch, img_size // patch
        self.feature_dim = embed_dim
        self.patch_embed = _PatchEmbed(patch, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList([_Block(embed_dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if h == w == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid.shape[-1]
        grid = grid.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, d)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise ValueError(f"tile size {tuple(x.shape[-2:])} is not a multiple of the {self.patch}-px patch")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)
        t = t + self._pos(x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]
