"""Many identically shaped MIL networks as one network, for training them side by side (:class:`StackedMIL`),
their dropout masks (:func:`draw_noise`) and their Adam (:class:`JobAdam`).

Networks come in *jobs* of ``share`` members that see the same instances at every step (the seed ensemble
of one training set): their first embedding layers are stored side by side as one ``(D, share * H)`` matrix
per job, so that the job's instances are multiplied once by one wider matrix rather than ``share`` times.
Every member keeps its own parameters (batched products over a leading axis), so training the stack with an
element-wise optimiser such as Adam equals training the members one by one on the same bag order, up to
float32 rounding of the products. Each job draws its dropout masks from its own random stream
(:func:`draw_noise`): what a job learns depends on its seed and bags, not on which jobs share its stack.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch import nn

from medseg.models.mil import AttentionMIL, attention_scores, bag_layout, pool_bags

__all__ = ["StackedMIL", "JobAdam", "draw_noise"]


def draw_noise(rng: np.random.Generator, layers: int, members: int, rows: int, width: int,
               p: float) -> np.ndarray:
    """The dropout masks of one training step of one job: ``(layers, members, rows, width)`` float32, each
    entry 0 with probability ``p`` and ``1 / (1 - p)`` otherwise (inverted dropout), for the ``rows``
    instances of the step, in that order, from ``rng``."""
    keep = rng.random((layers, members, rows, width), dtype=np.float32) >= np.float32(p)
    return keep.astype(np.float32) / np.float32(1.0 - p)


def _affine(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h @ w + b`` per leading index: ``(R, N, D), (R, D, H), (R, 1, H) -> (R, N, H)``; with one output
    (an attention score, a bag logit) a product per row, cheaper than a matrix product."""
    if w.shape[2] == 1:
        return (h * w.transpose(1, 2)).sum(-1, keepdim=True) + b
    return torch.baddbmm(b, h, w)


class _DirectAffine(torch.autograd.Function):
    """:func:`_affine` with the rows ``rows`` of stacked parameters (None: all), whose backward *writes* the
    weight and bias gradients of those rows into ``w.grad`` and ``b.grad`` (allocated once) and hands
    autograd only the gradient of ``h``. Within one backward in which every row is used exactly once,
    ``.grad`` then holds exactly the gradient that zeroing and accumulating would, without the zeroing,
    without a parameter-sized temporary per group of rows, and without a fresh gradient tensor each step."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        ws, bs = (w, b) if rows is None else (w[rows], b[rows])
        ctx.save_for_backward(h, ws)
        ctx.params, ctx.rows = (w, b), rows
        return _affine(h, ws, bs)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, ws = ctx.saved_tensors
        w, b = ctx.params
        for p in (w, b):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        one = ws.shape[2] == 1
        if ctx.rows is None:   # all rows: written straight into .grad, no temporary
            if one:
                torch.sum(h * g, 1, keepdim=True, out=w.grad.transpose(1, 2))
            else:
                torch.bmm(h.transpose(1, 2), g, out=w.grad)
            torch.sum(g, 1, keepdim=True, out=b.grad)
        else:
            w.grad.index_copy_(0, ctx.rows, (h * g).sum(1, keepdim=True).transpose(1, 2) if one
                               else torch.bmm(h.transpose(1, 2), g))
            b.grad.index_copy_(0, ctx.rows, g.sum(1, keepdim=True))
        gh = None
        if ctx.needs_input_grad[0]:
            gh = g * ws.transpose(1, 2) if one else torch.bmm(g, ws.transpose(1, 2))
        return gh, None, None, None


class StackedMIL(nn.Module):
    """``E`` identically shaped MIL networks (:class:`~medseg.models.mil.AttentionMIL` or
    :class:`~medseg.models.mil.PoolingMIL` of one configuration) evaluated in one pass; consecutive runs
    of ``share`` members form a job and see the same instances (``E`` a multiple of ``share``).
    :meth:`unstack` writes the weights back into the members. ``direct_grads``: backward writes each
    parameter's gradient into ``.grad`` (:class:`_DirectAffine`) instead of adding to it, for training loops in
    which every member runs exactly once per backward (no zeroing of the gradients).
    """

    def __init__(self, members: list[Any], *, share: int = 1, direct_grads: bool = False):
        super().__init__()
        if not members or share < 1 or len(members) % share:
            raise ValueError(f"StackedMIL needs members in whole jobs of {share}, got {len(members)}")
        self.share, self.direct_grads = int(share), bool(direct_grads)
        m0 = members[0]
        self.kind: str = ("gated" if m0.gated else "attention") if isinstance(m0, AttentionMIL) else m0.pool
        self.dropout = next((m.p for m in m0.embed if isinstance(m, nn.Dropout)), 0.0)
        self.embed = nn.ParameterList()
        for j, pos in enumerate(k for k, m in enumerate(m0.embed) if isinstance(m, nn.Linear)):
            w, b = self._stack([mm.embed[pos] for mm in members])
            self.embed.extend([self._merge(w), self._merge(b)] if j == 0 else [w, b])
        names = ["attn_v", "attn_w"] + (["attn_u"] if self.kind == "gated" else [])
        names = names if self.kind in ("attention", "gated") else []
        self.parts = nn.ModuleDict({n: nn.ParameterList(self._stack([getattr(mm, n) for mm in members]))
                                    for n in names + ["head"]})

    def _part(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked weight and bias of the layer ``name`` of the members."""
        pair = cast(nn.ParameterList, self.parts[name])
        return pair[0], pair[1]

    @staticmethod
    def _stack(layers: list[nn.Linear]) -> list[nn.Parameter]:
        w = torch.stack([lin.weight.detach().t() for lin in layers]).clone()
        b = torch.stack([lin.bias.detach().unsqueeze(0) for lin in layers]).clone()
        return [nn.Parameter(w), nn.Parameter(b)]

    def _merge(self, p: torch.Tensor) -> nn.Parameter:
        """``(E, D, H)`` per member -> ``(jobs, D, share * H)``: a job's members side by side."""
        e, d, h = p.shape
        return nn.Parameter(p.detach().view(e // self.share, self.share, d, h).transpose(1, 2)
                            .reshape(e // self.share, d, self.share * h).clone())

    def _split(self, p: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_merge` (also for activations ``(jobs, N, share * H)`` -> ``(E, N, H)``)."""
        j, d, sh = p.shape
        return p.reshape(j, d, self.share, sh // self.share).transpose(1, 2).reshape(j * self.share, d, -1)

    @property
    def n_jobs(self) -> int:
        return self._part("head")[0].shape[0] // self.share

    def unstack(self, members: list[Any]) -> list[Any]:
        """Copy the stacked weights back into ``members`` (same order as built); returns them."""
        embed = [self._split(p) if k < 2 else p for k, p in enumerate(self.embed)]
        with torch.no_grad():
            for e, mm in enumerate(members):
                lins = [m for m in mm.embed if isinstance(m, nn.Linear)]
                for j, lin in enumerate(lins):
                    lin.weight.copy_(embed[2 * j][e].t())
                    lin.bias.copy_(embed[2 * j + 1][e, 0])
                for n in self.parts:
                    w, b = self._part(n)
                    getattr(mm, n).weight.copy_(w[e].t())
                    getattr(mm, n).bias.copy_(b[e, 0])
        return members

    def members_of(self, jobs: torch.Tensor) -> torch.Tensor:
        """Member indices of ``jobs``, job by job."""
        return (jobs.unsqueeze(1) * self.share + torch.arange(self.share, device=jobs.device)).reshape(-1)

    def _linear(self, w: torch.Tensor, b: torch.Tensor, h: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Each member's (or job's) linear layer on its own rows ``(R, N, D) -> (R, N, H)`` (``rows``: only
        those rows of the stacked parameters, in that order)."""
        if self.direct_grads and self.training and torch.is_grad_enabled():
            return _DirectAffine.apply(h, w, b, rows)
        if rows is not None:
            w, b = w[rows], b[rows]
        return _affine(h, w, b)

    def _embed(self, x: torch.Tensor, jobs: torch.Tensor | None, noise: list[torch.Tensor] | None) -> torch.Tensor:
        """Job instances ``(J, N, D)`` -> each member's embedding ``(J * share, N, H)``; ``noise``: the
        dropout masks per layer ``(J * share, N, H)`` (None: drawn by torch)."""
        if not len(self.embed):
            return x.repeat_interleave(self.share, 0)
        members = None if jobs is None else self.members_of(jobs)
        h = x
        for k in range(0, len(self.embed), 2):
            h = torch.relu(self._linear(self.embed[k], self.embed[k + 1], h, jobs if k == 0 else members))
            if k == 0:
                h = self._split(h)
            if self.dropout > 0 and self.training:
                h = h * noise[k // 2] if noise is not None else nn.functional.dropout(h, self.dropout)
        return h

    @property
    def noise_shape(self) -> tuple[int, int]:
        """(layers, width) of the dropout masks a training pass takes (:func:`draw_noise`); layers 0 without
        dropout."""
        layers = len(self.embed) // 2 if self.dropout > 0 else 0
        return layers, (self.embed[0].shape[2] // self.share if len(self.embed) else 0)

    def _pool(self, h: torch.Tensor, members: torch.Tensor | None = None, **layout) -> torch.Tensor:
        """Bag embeddings of the embedded instances ``h`` (layouts of :func:`pool_bags`)."""
        if self.kind not in ("attention", "gated"):
            return pool_bags(h, self.kind, **layout)
        lin = {name: (lambda a, name=name: self._linear(*self._part(name), a, members)) for name in self.parts}
        scores = attention_scores(h, lin["attn_v"], lin["attn_w"], lin.get("attn_u"))
        return pool_bags(h, "attention", scores=scores, **layout)

    def forward_padded(self, x: torch.Tensor, mask: torch.Tensor, jobs: torch.Tensor | None = None,
                       noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One bag per job: ``x`` ``(J, N, D)`` padded instances, ``mask`` ``(J, N)`` True on real ones;
        returns logits ``(J * share,)``, job by job (a member sees only its job's bag). With ``jobs``
        (indices ``(J,)``) only those jobs run: groups of jobs whose bags are short need not be padded to
        the longest bag of the step. ``noise``: see :meth:`_embed`."""
        members = None if jobs is None else self.members_of(jobs)
        z = self._pool(self._embed(x, jobs, noise), members, mask=mask.repeat_interleave(self.share, 0))
        return self._linear(*self._part("head"), z.unsqueeze(1), members).reshape(-1)

    def forward(self, x: torch.Tensor, bag_index: torch.Tensor | None = None, n_bags: int | None = None,
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Instances ``(N, D)`` seen by every member -> logits ``(E, B)``."""
        idx, n = bag_layout(x, bag_index, n_bags)
        h = self._embed(x.unsqueeze(0).expand(self.n_jobs, *x.shape), None, noise)
        z = self._pool(h, bag_index=None if n == 1 else idx, n_bags=n)  # one bag (the training default): fewer ops
        return self._linear(*self._part("head"), z, None).squeeze(-1)


class JobAdam:
    """Adam (with L2 ``weight_decay`` added to the gradient, as ``torch.optim.Adam``) over the parameters
    of a :class:`StackedMIL` whose first axis runs over jobs (one or several rows per job); :meth:`step`
    updates only the ``active`` jobs and counts steps per job, so a job that sits a step out is left
    untouched. Jobs have their own learning rate and weight decay. Consecutive active jobs with the same
    step count and hyper-parameters are updated by one call of torch's fused Adam kernel on their rows
    (the kernel ``torch.optim.Adam(fused=True)`` runs); where it is missing, by element-wise operations."""

    def __init__(self, params, n_jobs: int, *, lr: float | list[float], weight_decay: float | list[float] = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.n = n_jobs
        self.rows = [p.shape[0] // n_jobs for p in self.params]
        if any(r * n_jobs != p.shape[0] for r, p in zip(self.rows, self.params)):
            raise ValueError("every parameter's first axis must hold whole jobs")
        as_list = lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * n_jobs)]  # noqa: E731
        self.lr, self.wd = as_list(lr), as_list(weight_decay)
        self.betas, self.eps = betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.count = np.zeros(n_jobs, np.int64)   # steps taken per job
        self.fused = hasattr(torch, "_fused_adam_") and self.params[0].device.type in ("cpu", "cuda")

    def _runs(self, active: np.ndarray) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        key = lambda j: (self.lr[j], self.wd[j], self.count[j])  # noqa: E731
        for j in np.flatnonzero(active).tolist():
            if runs and runs[-1][1] == j and key(runs[-1][0]) == key(j):
                runs[-1] = (runs[-1][0], j + 1)
            else:
                runs.append((j, j + 1))
        return runs

    @torch.no_grad()
    def step(self, active: np.ndarray) -> None:
        active = np.asarray(active, bool)
        if any(p.grad is None for p in self.params):
            raise RuntimeError("JobAdam.step without gradients")
        self.count[active] += 1
        for a, b in self._runs(active):
            cut = [slice(a * r, b * r) for r in self.rows]
            ps = [p[c] for p, c in zip(self.params, cut)]
            gs = [p.grad[c] for p, c in zip(self.params, cut)]
            ms = [m[c] for m, c in zip(self.m, cut)]
            vs = [v[c] for v, c in zip(self.v, cut)]
            if self.fused:   # the step count as torch's fused Adam keeps it: a float32 tensor
                ts = [torch.tensor(float(self.count[a]), device=ps[0].device)] * len(ps)
                torch._fused_adam_(ps, gs, ms, vs, [], ts, lr=self.lr[a], beta1=self.betas[0], beta2=self.betas[1],
                                   weight_decay=self.wd[a], eps=self.eps, amsgrad=False, maximize=False)
            else:
                self._plain(ps, gs, ms, vs, int(self.count[a]), self.lr[a], self.wd[a])

    def _plain(self, ps, gs, ms, vs, n: int, lr: float, wd: float) -> None:
        b1, b2 = self.betas
        for p, g, m, v in zip(ps, gs, ms, vs):
            g = g.add(p, alpha=wd) if wd else g
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / (1 - b2 ** n) ** 0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1 ** n))
