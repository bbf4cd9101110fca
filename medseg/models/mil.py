"""Multiple-instance-learning aggregators: attention-MIL, gated attention-MIL, mean and max pooling.

A batch of bags is given as the instances of all bags stacked into one ``(N, D)`` tensor plus
``bag_index`` ``(N,)`` saying which bag (``0..B-1``) each instance belongs to; no padding is
needed, so bags of 2 and of 1,000 instances train side by side. A single bag is ``x`` alone.

Attention-MIL follows Ilse, Tomczak & Welling, "Attention-based deep multiple instance
learning", ICML 2018: instance embeddings ``h_k``, weights ``a_k = softmax_k(w^T tanh(V h_k))``
(gated: ``w^T (tanh(V h_k) * sigmoid(U h_k))``), bag embedding ``z = sum_k a_k h_k`` and a
linear classifier on ``z``. ``forward`` returns bag logits; :meth:`AttentionMIL.attention`
returns the per-instance weights used for heatmaps. The scores and the pooling are written once
(:func:`attention_scores`, :func:`pool_bags`) and used by every head, the stacked one
(:class:`medseg.mil.stack.StackedMIL`) included.

>>> import torch
>>> net = AttentionMIL(in_features=4, gated=True)
>>> x = torch.randn(5, 4); idx = torch.tensor([0, 0, 1, 1, 1])
>>> net(x, idx).shape, net.attention(x, idx).shape
(torch.Size([2]), torch.Size([5]))
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.registry import Registry

__all__ = ["AttentionMIL", "PoolingMIL", "attention_scores", "bag_layout", "pool_bags", "segment_softmax",
           "segment_sum", "segment_max", "MIL_HEADS", "create_mil_head", "mil_head_names", "MIL_MODELS"]

# MIL heads: (N, D) instances (+ bag index) -> bag logits; built by name from MILTrainConfig.model.
MIL_HEADS = Registry("MIL head")


def bag_layout(x: torch.Tensor, bag_index: torch.Tensor | None, n_bags: int | None) -> tuple[torch.Tensor, int]:
    """The bag index of each instance ``(N,)`` and the bag count (no ``bag_index``: one bag)."""
    if bag_index is None:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
    if n_bags is None:
        n_bags = int(bag_index.max().item()) + 1 if bag_index.numel() else 0
    return bag_index.long(), n_bags


def segment_sum(values: torch.Tensor, bag_index: torch.Tensor, n_bags: int, dim: int = 0) -> torch.Tensor:
    """Sum the entries of ``values`` along ``dim`` (the instance axis) per bag -> ``n_bags`` there."""
    shape = list(values.shape)
    shape[dim] = n_bags
    return values.new_zeros(shape).index_add(dim, bag_index, values)


def segment_max(values: torch.Tensor, bag_index: torch.Tensor, n_bags: int, dim: int = 0) -> torch.Tensor:
    """Maximum of ``values`` along ``dim`` (the instance axis) per bag -> ``n_bags`` there."""
    view = [1] * values.dim()
    view[dim] = -1
    idx = bag_index.view(view).expand_as(values)
    shape = list(values.shape)
    shape[dim] = n_bags
    return values.new_full(shape, float("-inf")).scatter_reduce(dim, idx, values, reduce="amax", include_self=True)


def segment_softmax(scores: torch.Tensor, bag_index: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Softmax of ``scores`` ``(..., N)`` within each bag along the last axis (a bag's weights sum to 1)."""
    dim = scores.dim() - 1
    peak = segment_max(scores, bag_index, n_bags, dim)
    e = torch.exp(scores - peak[..., bag_index])
    return e / segment_sum(e, bag_index, n_bags, dim)[..., bag_index]


def attention_scores(h: torch.Tensor, v, w, u=None) -> torch.Tensor:
    """Attention logits ``w^T tanh(V h)`` (gated, with ``u``: ``w^T (tanh(V h) * sigmoid(U h))``,
    Ilse et al. 2018) of instance embeddings ``(..., N, E)`` -> ``(..., N)``; ``v``, ``u``, ``w``
    are the linear maps (callables)."""
    a = torch.tanh(v(h))
    if u is not None:
        a = a * torch.sigmoid(u(h))
    return w(a).squeeze(-1)


def pool_bags(h: torch.Tensor, how: str, *, scores: torch.Tensor | None = None,
              bag_index: torch.Tensor | None = None, n_bags: int = 1,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool instance embeddings ``h`` ``(..., N, E)`` into bag embeddings: ``how`` is ``"attention"``
    (softmax of ``scores`` ``(..., N)`` within the bag, weighted sum of ``h``), ``"mean"`` or
    ``"max"``. Leading axes (``...``) are independent (the members of :class:`medseg.mil.stack.StackedMIL`).

    Three layouts of the instances:

    * ``bag_index`` ``(N,)``: bag of each instance -> ``(..., n_bags, E)``;
    * neither ``bag_index`` nor ``mask``: all ``N`` instances form one bag -> ``(..., 1, E)``
      (attention then takes a plain softmax, fewer operations);
    * ``mask`` ``(..., N)``: padded instances, True on real ones, one bag per leading index
      -> ``(..., E)``.
    """
    if how not in ("attention", "mean", "max"):
        raise ValueError(f"pooling must be 'attention', 'mean' or 'max', got {how!r}")
    if how == "attention" and scores is None:
        raise ValueError("attention pooling needs scores")
    if mask is not None:
        if how == "attention":
            a = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            return (h * a.unsqueeze(-1)).sum(-2)
        m = mask.unsqueeze(-1)
        if how == "max":
            return h.masked_fill(~m, float("-inf")).amax(-2)
        return (h * m).sum(-2) / mask.sum(-1, keepdim=True).clamp_min(1)
    if bag_index is None:
        if how == "attention":
            return torch.matmul(torch.softmax(scores, -1).unsqueeze(-2), h)
        bag_index, n_bags = torch.zeros(h.shape[-2], dtype=torch.long, device=h.device), 1
    dim = h.dim() - 2
    if how == "attention":
        a = segment_softmax(scores, bag_index, n_bags)
        return segment_sum(h * a.unsqueeze(-1), bag_index, n_bags, dim)
    if how == "max":
        return segment_max(h, bag_index, n_bags, dim)
    counts = segment_sum(torch.ones_like(h[..., :1]), bag_index, n_bags, dim)
    return segment_sum(h, bag_index, n_bags, dim) / counts.clamp_min(1)


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
        return attention_scores(h, self.attn_v, self.attn_w, self.attn_u)

    def attention(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                  n_bags: int | None = None) -> torch.Tensor:
        """Attention weights ``(N,)``: within each bag they are >= 0 and sum to 1."""
        idx, n = bag_layout(x, bag_index, n_bags)
        return segment_softmax(self._scores(self.embed(x)), idx, n)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        """Bag logits ``(B,)`` (or ``(B, n_classes)`` when ``n_classes > 1``) for instances ``(N, D)``."""
        idx, n = bag_layout(x, bag_index, n_bags)
        h = self.embed(x)
        out = self.head(pool_bags(h, "attention", scores=self._scores(h), bag_index=idx, n_bags=n))
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

    def attention(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                  n_bags: int | None = None) -> torch.Tensor:
        idx, n = bag_layout(x, bag_index, n_bags)
        h = self.embed(x)
        if self.pool == "mean":
            counts = segment_sum(torch.ones_like(h[:, 0]), idx, n)
            return 1.0 / counts[idx]
        is_max = (h == segment_max(h, idx, n)[idx]).float().mean(1)
        return is_max / segment_sum(is_max, idx, n)[idx].clamp_min(1e-12)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        idx, n = bag_layout(x, bag_index, n_bags)
        out = self.head(pool_bags(self.embed(x), self.pool, bag_index=idx, n_bags=n))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@MIL_HEADS.register("attention_mil")
def attention_mil(**kw) -> AttentionMIL:
    """Attention-MIL (Ilse et al. 2018)."""
    return AttentionMIL(gated=False, **kw)


@MIL_HEADS.register("gated_attention_mil")
def gated_attention_mil(**kw) -> AttentionMIL:
    """Gated attention-MIL (Ilse et al. 2018)."""
    return AttentionMIL(gated=True, **kw)


@MIL_HEADS.register("mean_mil")
def mean_mil(**kw) -> PoolingMIL:
    """Mean-pooling MIL baseline."""
    return PoolingMIL(pool="mean", **kw)


@MIL_HEADS.register("max_mil")
def max_mil(**kw) -> PoolingMIL:
    """Max-pooling MIL baseline."""
    return PoolingMIL(pool="max", **kw)


MIL_MODELS = tuple(MIL_HEADS.names())  # the built-in heads


def create_mil_head(name: str, **kwargs) -> nn.Module:
    """Build a registered MIL head by name (``in_features`` and the head's own keyword arguments)."""
    return MIL_HEADS.create(name, **kwargs)


def mil_head_names() -> list[str]:
    return MIL_HEADS.names()
