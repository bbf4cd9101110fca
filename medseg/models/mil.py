"""Multiple-instance-learning aggregators: attention-MIL, gated attention-MIL, mean and max pooling.

A batch of bags is given as the instances of all bags stacked into one ``(N, D)`` tensor plus
``bag_index`` ``(N,)`` saying which bag (``0..B-1``) each instance belongs to; no padding is
needed, so bags of 2 and of 1,000 instances train side by side. A single bag is ``x`` alone.

Attention-MIL follows Ilse, Tomczak & Welling, "Attention-based deep multiple instance
learning", ICML 2018: instance embeddings ``h_k``, weights ``a_k = softmax_k(w^T tanh(V h_k))``
(gated: ``w^T (tanh(V h_k) * sigmoid(U h_k))``), bag embedding ``z = sum_k a_k h_k`` and a
linear classifier on ``z``. ``forward`` returns bag logits; :meth:`AttentionMIL.attention`
returns the per-instance weights used for heatmaps. The scores and the pooling are written once
(:func:`attention_scores`, :func:`pool_bags`) and used by every head, the stacked one included.

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

__all__ = ["AttentionMIL", "PoolingMIL", "StackedMIL", "attention_scores", "pool_bags", "segment_softmax",
           "segment_sum", "segment_max", "MIL_HEADS", "create_mil_head", "mil_head_names", "MIL_MODELS"]

# MIL heads: (N, D) instances (+ bag index) -> bag logits; built by name from MILTrainConfig.model.
MIL_HEADS = Registry("MIL head")


def _index(x: torch.Tensor, bag_index: torch.Tensor | None, n_bags: int | None) -> tuple[torch.Tensor, int]:
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
    ``"max"``. Leading axes (``...``) are independent (the members of :class:`StackedMIL`).

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
        idx, n = _index(x, bag_index, n_bags)
        return segment_softmax(self._scores(self.embed(x)), idx, n)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        """Bag logits ``(B,)`` (or ``(B, n_classes)`` when ``n_classes > 1``) for instances ``(N, D)``."""
        idx, n = _index(x, bag_index, n_bags)
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
        out = self.head(pool_bags(self.embed(x), self.pool, bag_index=idx, n_bags=n))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def dropout_noise(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The scaled keep-mask ``nn.functional.dropout`` multiplies by on the CPU, drawn the same way
    (``bernoulli_(1 - p)`` of a float32 tensor of ``shape``, divided by ``1 - p``): ``h * noise`` equals
    ``dropout(h, p)`` bit for bit from the same random state."""
    return torch.empty(shape).bernoulli_(1 - p).div_(1 - p)


class _Rows(torch.autograd.Function):
    """``param[rows]`` (``rows`` None: all of ``param``) whose backward *writes* the gradient of those rows
    into ``param.grad`` (``index_copy_``) and hands nothing on to autograd. Within one backward in which every
    row of ``param`` is used exactly once, ``param.grad`` then holds exactly the gradient that zeroing it
    and accumulating would (each row's value is its only term), without the zeroing and without the
    parameter-sized zero tensor that indexing's backward fills for every group of rows."""

    @staticmethod
    def forward(ctx, param: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        ctx.param, ctx.rows = param, rows
        return param.view_as(param) if rows is None else param[rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        param, rows = ctx.param, ctx.rows
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        if rows is None:
            param.grad.copy_(grad)
        else:
            param.grad.index_copy_(0, rows, grad)
        return None, None


class StackedMIL(nn.Module):
    """E identically shaped MIL networks evaluated in one pass (for training seed ensembles fast).

    Built from a list of :class:`AttentionMIL` or :class:`PoolingMIL` of the same configuration;
    each member keeps its own parameters (batched matrix products over a leading member axis), so
    training the stack with an element-wise optimiser such as Adam equals training the members
    one by one on the same bag order. :meth:`unstack` writes the trained weights back.
    ``forward`` returns logits ``(E, B)``.
    """

    def __init__(self, members: list[nn.Module], *, direct_grads: bool = False):
        super().__init__()
        if not members:
            raise ValueError("StackedMIL needs at least one member")
        # With direct_grads, backward writes each parameter's gradient rows straight into ``.grad`` (allocated
        # by the optimiser) instead of adding them: see _Rows. For training loops that run one backward per
        # step over every member exactly once (medseg.mil.folds): no zeroing of the gradients, and no
        # parameter-sized zero tensor per group of members.
        self.direct_grads = bool(direct_grads)
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

    def _linear(self, w: torch.Tensor, b: torch.Tensor, h: torch.Tensor,
                members: torch.Tensor | None = None) -> torch.Tensor:
        """Each member's linear layer on its own rows: ``(E, N, D) -> (E, N, H)`` (``members``: only
        those members, in that order, one row block each)."""
        if self.direct_grads and self.training and torch.is_grad_enabled():
            w, b = _Rows.apply(w, members), _Rows.apply(b, members)
        elif members is not None:
            w, b = w[members], b[members]
        return torch.baddbmm(b, h, w)

    def _embed(self, h: torch.Tensor, members: torch.Tensor | None = None,
               draw: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Each member's embedding layers on its own copy of the instances: ``(E, N, D) -> (E, N, H)``.
        ``draw = (rows, picked)``: the dropout masks are drawn for ``rows`` members (the random draws of a
        stack that holds them all) and rows ``picked`` used, so a stack holding part of the members gets
        the very masks the whole one would (:func:`dropout_draws`)."""
        for j in range(0, len(self.embed), 2):
            h = torch.relu(self._linear(self.embed[j], self.embed[j + 1], h, members))
            if self.dropout > 0 and self.training and draw is not None:
                h = h * dropout_noise((draw[0], *h.shape[1:]), self.dropout)[draw[1]]
            elif self.dropout > 0:
                h = nn.functional.dropout(h, self.dropout, self.training)
        return h

    def dropout_draws(self, rows: int, n: int) -> None:
        """The random draws of a training forward of ``rows`` members on bags padded to ``n`` instances,
        without the forward: a stack holding none of those members keeps its random stream in step."""
        if self.dropout > 0 and self.training:
            width = self.embed[0].shape[2]
            for _ in range(0, len(self.embed), 2):
                dropout_noise((rows, n, width), self.dropout)

    def _pool(self, h: torch.Tensor, members: torch.Tensor | None = None, **layout) -> torch.Tensor:
        """Bag embeddings of the embedded instances ``h`` (layouts of :func:`pool_bags`)."""
        if self.kind not in ("attention", "gated"):
            return pool_bags(h, self.kind, **layout)
        lin = {name: (lambda a, name=name: self._linear(*self.parts[name], a, members)) for name in self.parts}
        scores = attention_scores(h, lin["attn_v"], lin["attn_w"], lin.get("attn_u"))
        return pool_bags(h, "attention", scores=scores, **layout)

    def forward_padded(self, x: torch.Tensor, mask: torch.Tensor, members: torch.Tensor | None = None,
                       draw: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """One bag per member: ``x`` ``(E, N, D)`` padded instances, ``mask`` ``(E, N)`` True on real
        ones; returns logits ``(E,)`` (member e sees only its own bag). With ``members`` (indices
        ``(M,)``) only those members run, on ``x`` ``(M, N, D)``: groups of members whose bags are
        short need not be padded to the longest bag of the step. ``draw``: see :meth:`_embed`."""
        z = self._pool(self._embed(x, members, draw), members, mask=mask)
        return self._linear(*self.parts["head"], z.unsqueeze(1), members).reshape(-1)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None,
                n_bags: int | None = None) -> torch.Tensor:
        idx, n = _index(x, bag_index, n_bags)
        e = self.embed[0].shape[0] if len(self.embed) else self.parts["head"][0].shape[0]
        h = self._embed(x.unsqueeze(0).expand(e, *x.shape))
        z = self._pool(h, bag_index=None if n == 1 else idx, n_bags=n)  # one bag (the training default): fewer ops
        return self._linear(*self.parts["head"], z).squeeze(-1)


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
