"""Multiple-instance-learning aggregators: attention-MIL, gated attention-MIL, mean and max pooling.

A batch of bags is given as the instances of all bags stacked into one ``(N, D)`` tensor plus
``bag_index`` ``(N,)`` saying which bag (``0..B-1``) each instance belongs to; no padding is
needed, so bags of 2 and of 1,000 instances train side by side. A single bag is ``x`` alone.

Attention-MIL follows Ilse, Tomczak & Welling, "Attention-based deep multiple instance
learning", ICML 2018: instance embeddings ``h_k``, weights ``a_k = softmax_k(w^T tanh(V h_k))``
(gated: ``w^T (tanh(V h_k) * sigmoid(U h_k))``), bag embedding ``z = sum_k a_k h_k`` and a
linear classifier on ``z``. ``forward`` returns bag logits; :meth:`AttentionMIL.attention`
returns the per-instance weights used for heatmaps.

>>> import torch
>>> net = AttentionMIL(in_features=4, gated=True)
>>> x = torch.randn(5, 4); idx = torch.tensor([0, 0, 1, 1, 1])
>>> net(x, idx).shape, net.attention(x, idx).shape
(torch.Size([2]), torch.Size([5]))
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.models import register_model

__all__ = ["AttentionMIL", "PoolingMIL", "StackedMIL", "segment_softmax", "segment_sum", "segment_max"]


def _index(x: torch.Tensor, bag_index: torch.Tensor | None, n_bags: int | None) -> tuple[torch.Tensor, int]:
    if bag_index is None:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
    if n_bags is None:
        n_bags = int(bag_index.max().item()) + 1 if bag_index.numel() else 0
    return bag_index.long(), n_bags


def segment_sum(values: torch.Tensor, bag_index: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Sum rows of ``values`` ``(N, ...)`` per bag -> ``(n_bags, ...)``."""
    out = values.new_zeros((n_bags, *values.shape[1:]))
    return out.index_add(0, bag_index, values)


def segment_max(values: torch.Tensor, bag_index: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Row-wise maximum per bag of ``values`` ``(N, C)`` -> ``(n_bags, C)``."""
    idx = bag_index.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    out = values.new_full((n_bags, *values.shape[1:]), float("-inf"))
    return out.scatter_reduce(0, idx, values, reduce="amax", include_self=True)


def segment_softmax(scores: torch.Tensor, bag_index: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Softmax of ``scores`` ``(N,)`` within each bag (weights of one bag sum to 1)."""
    peak = segment_max(scores.unsqueeze(1), bag_index, n_bags).squeeze(1)
    e = torch.exp(scores - peak[bag_index])
    denom = segment_sum(e, bag_index, n_bags)
    return e / denom[bag_index]


def _mlp(in_features: int, embed_dim: int, layers: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_features
    for _ in range(layers):
        mods += [nn.Linear(d, embed_dim), nn.ReLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        d = embed_dim
    return nn.Sequential(*mods)


class AttentionMIL(nn.Module):
    """Attention (``gated=False``) or gated attention (``gated=True``) MIL pooling.

    Parameters
    ----------
    in_features : instance feature length D.
    embed_dim : width of the instance embedding (``embed_layers`` ReLU layers; 0 = identity).
    attn_dim : hidden width L of the attention network.
    dropout : dropout after each embedding layer.
    """

    def __init__(self, *, in_features: int, embed_dim: int = 128, attn_dim: int = 128, gated: bool = False,
                 dropout: float = 0.0, embed_layers: int = 1, n_classes: int = 1):
        super().__init__()
        self.embed = _mlp(in_features, embed_dim, embed_layers, dropout)
        d = embed_dim if embed_layers > 0 else in_features
        self.attn_v = nn.Linear(d, attn_dim)
        self.attn_u = nn.Linear(d, attn_dim) if gated else None
        self.attn_w = nn.Linear(attn_dim, 1)
        self.head = nn.Linear(d, n_classes)
        self.gated = gated

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Instance embeddings ``(N, E)``."""
        return self.embed(x)

    def _scores(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.attn_v(h))
        if self.attn_u is not None:
            a = a * torch.sigmoid(self.attn_u(h))
        return self.attn_w(a).squeeze(-1)

    def attention(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                  n_bags: int | None = None) -> torch.Tensor:
        """Attention weights ``(N,)``: within each bag they are >= 0 and sum to 1."""
        idx, n = _index(x, bag_index, n_bags)
        return segment_softmax(self._scores(self.embed(x)), idx, n)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        """Bag logits ``(B,)`` (or ``(B, n_classes)`` when ``n_classes > 1``) for instances ``(N, D)``."""
        idx, n = _index(x, bag_index, n_bags)
        h = self.embed(x)
        a = segment_softmax(self._scores(h), idx, n)
        z = segment_sum(h * a.unsqueeze(1), idx, n)
        out = self.head(z)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class PoolingMIL(nn.Module):
    """Embedding, then mean or max pooling over the instances of each bag, then a linear head.

    :meth:`attention` gives mean pooling's uniform weights, and for max pooling the share of
    embedding channels for which an instance is the bag maximum (a crude saliency).
    """

    def __init__(self, *, in_features: int, embed_dim: int = 128, pool: str = "mean", dropout: float = 0.0,
                 embed_layers: int = 1, n_classes: int = 1):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
        self.embed = _mlp(in_features, embed_dim, embed_layers, dropout)
        d = embed_dim if embed_layers > 0 else in_features
        self.head = nn.Linear(d, n_classes)
        self.pool = pool

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def _pool(self, h: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
        if self.pool == "max":
            return segment_max(h, idx, n)
        counts = segment_sum(torch.ones_like(h[:, :1]), idx, n)
        return segment_sum(h, idx, n) / counts.clamp_min(1)

    def attention(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                  n_bags: int | None = None) -> torch.Tensor:
        idx, n = _index(x, bag_index, n_bags)
        h = self.embed(x)
        if self.pool == "mean":
            counts = segment_sum(torch.ones_like(h[:, 0]), idx, n)
            return 1.0 / counts[idx]
        is_max = (h == segment_max(h, idx, n)[idx]).float().mean(1)
        return is_max / segment_sum(is_max, idx, n)[idx].clamp_min(1e-12)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        idx, n = _index(x, bag_index, n_bags)
        out = self.head(self._pool(self.embed(x), idx, n))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class StackedMIL(nn.Module):
    """E identically shaped MIL networks evaluated in one pass (for training seed ensembles fast).

    Built from a list of :class:`AttentionMIL` or :class:`PoolingMIL` of the same configuration;
    each member keeps its own parameters (batched matrix products over a leading member axis), so
    training the stack with an element-wise optimiser such as Adam equals training the members
    one by one on the same bag order. :meth:`unstack` writes the trained weights back.
    ``forward`` returns logits ``(E, B)``.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("StackedMIL needs at least one member")
        m0 = members[0]
        self.kind = ("gated" if m0.gated else "attention") if isinstance(m0, AttentionMIL) else m0.pool
        self.dropout = next((m.p for m in m0.embed if isinstance(m, nn.Dropout)), 0.0)
        self.embed = nn.ParameterList()
        for layer in [m for m in m0.embed if isinstance(m, nn.Linear)]:
            pos = list(m0.embed).index(layer)
            self.embed.extend(self._stack([mm.embed[pos] for mm in members]))
        names = ["attn_v", "attn_w"] + (["attn_u"] if self.kind == "gated" else [])
        names = names if self.kind in ("attention", "gated") else []
        self.parts = nn.ModuleDict({n: nn.ParameterList(self._stack([getattr(mm, n) for mm in members]))
                                    for n in names + ["head"]})

    @staticmethod
    def _stack(layers: list[nn.Linear]) -> list[nn.Parameter]:
        w = torch.stack([lin.weight.detach().t() for lin in layers]).clone()
        b = torch.stack([lin.bias.detach().unsqueeze(0) for lin in layers]).clone()
        return [nn.Parameter(w), nn.Parameter(b)]

    def unstack(self, members: list[nn.Module]) -> list[nn.Module]:
        """Copy the stacked weights back into ``members`` (same order as built); returns them."""
        with torch.no_grad():
            for e, mm in enumerate(members):
                lins = [m for m in mm.embed if isinstance(m, nn.Linear)]
                for j, lin in enumerate(lins):
                    lin.weight.copy_(self.embed[2 * j][e].t())
                    lin.bias.copy_(self.embed[2 * j + 1][e, 0])
                for n, (w, b) in self.parts.items():
                    getattr(mm, n).weight.copy_(w[e].t())
                    getattr(mm, n).bias.copy_(b[e, 0])
        return members

    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        """Each member's embedding layers on its own copy of the instances: ``(E, N, D) -> (E, N, H)``."""
        for j in range(0, len(self.embed), 2):
            h = torch.relu(torch.baddbmm(self.embed[j + 1], h, self.embed[j]))
            if self.dropout > 0:
                h = nn.functional.dropout(h, self.dropout, self.training)
        return h

    def _scores(self, h: torch.Tensor) -> torch.Tensor:
        """Attention logits ``(E, N)`` (gated: tanh branch times sigmoid branch, Ilse et al.)."""
        v, bv = self.parts["attn_v"]
        a = torch.tanh(torch.baddbmm(bv, h, v))
        if self.kind == "gated":
            u, bu = self.parts["attn_u"]
            a = a * torch.sigmoid(torch.baddbmm(bu, h, u))
        w, bw = self.parts["attn_w"]
        return torch.baddbmm(bw, a, w).squeeze(-1)

    def forward_padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One bag per member: ``x`` ``(E, N, D)`` padded instances, ``mask`` ``(E, N)`` True on real
        ones; returns logits ``(E,)`` (member e sees only its own bag)."""
        h = self._embed(x)
        m = mask.unsqueeze(-1)
        if self.kind in ("attention", "gated"):
            s = self._scores(h).masked_fill(~mask, float("-inf"))
            z = (h * torch.softmax(s, 1).unsqueeze(-1)).sum(1)
        elif self.kind == "max":
            z = h.masked_fill(~m, float("-inf")).amax(1)
        else:
            z = (h * m).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        hw, hb = self.parts["head"]
        return torch.baddbmm(hb, z.unsqueeze(1), hw).reshape(-1)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        idx, n = _index(x, bag_index, n_bags)
        e = self.embed[0].shape[0] if len(self.embed) else self.parts["head"][0].shape[0]
        h = self._embed(x.unsqueeze(0).expand(e, *x.shape))
        if self.kind in ("attention", "gated"):
            s = self._scores(h)  # (E, N)
            if n == 1:  # one bag (the training default): a plain softmax, fewer operations
                z = torch.bmm(torch.softmax(s, 1).unsqueeze(1), h)  # (E, 1, H)
            else:
                peak = s.new_full((e, n), float("-inf")).scatter_reduce(1, idx.expand(e, -1), s, "amax")
                ex = torch.exp(s - peak[:, idx])
                att = ex / ex.new_zeros((e, n)).index_add(1, idx, ex)[:, idx]
                z = h.new_zeros((e, n, h.shape[-1])).index_add(1, idx, h * att.unsqueeze(-1))
        elif self.kind == "max":
            z = h.new_full((e, n, h.shape[-1]), float("-inf")).scatter_reduce(
                1, idx.view(1, -1, 1).expand_as(h), h, "amax")
        else:
            cnt = torch.bincount(idx, minlength=n).clamp_min(1).to(h.dtype)
            z = h.new_zeros((e, n, h.shape[-1])).index_add(1, idx, h) / cnt.view(1, -1, 1)
        hw, hb = self.parts["head"]
        return torch.baddbmm(hb, z, hw).squeeze(-1)


@register_model("attention_mil")
def attention_mil(**kw) -> AttentionMIL:
    """Attention-MIL (Ilse et al. 2018)."""
    return AttentionMIL(gated=False, **kw)


@register_model("gated_attention_mil")
def gated_attention_mil(**kw) -> AttentionMIL:
    """Gated attention-MIL (Ilse et al. 2018)."""
    return AttentionMIL(gated=True, **kw)


@register_model("mean_mil")
def mean_mil(**kw) -> PoolingMIL:
    """Mean-pooling MIL baseline."""
    return PoolingMIL(pool="mean", **kw)


@register_model("max_mil")
def max_mil(**kw) -> PoolingMIL:
    """Max-pooling MIL baseline."""
    return PoolingMIL(pool="max", **kw)


MIL_MODELS = ("attention_mil", "gated_attention_mil", "mean_mil", "max_mil")
