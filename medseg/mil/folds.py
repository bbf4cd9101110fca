"""Train the MIL aggregators of several training sets side by side (the folds of a CV repeat).

Tiny MIL networks trained one bag per step are bound by per-operation overhead, not arithmetic,
so cross-validation trains the networks of all folds of a repeat as one stacked network
(:class:`~medseg.models.mil.StackedMIL`): each step, every fold's networks get the next bag of
their own epoch order (bags padded to the longest one and masked). Each fold keeps exactly what
:func:`~medseg.mil.fit.fit_mil` would give it: its own standardisation, initial
weights and per-epoch bag order from its seed, and Adam updates of its own (a fold whose epoch is
one bag shorter skips that step: :class:`MaskedAdam`). Only dropout masks come from another
random stream, so with ``dropout=0`` the result equals training the folds one by one (up to
floating-point summation order). The loop is :func:`~medseg.mil.fit.train_runs`, the one
``fit_mil`` runs; this module gives it the padded step (:func:`padded_step`).
"""

from __future__ import annotations

import numpy as np
import torch

from medseg.mil.fit import MILRun, Step, start_run, train_runs
from medseg.models.mil import StackedMIL

__all__ = ["MaskedAdam", "fit_mil_many", "padded_step"]


class MaskedAdam:
    """Adam (with L2 ``weight_decay`` added to the gradient, as ``torch.optim.Adam``) over
    parameters whose first axis is the member axis; :meth:`step` updates only the ``active``
    members and counts steps per member, so a member that skips a step is left untouched."""

    def __init__(self, params, n_members: int, *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(n_members, dtype=torch.float64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        act = active.to(torch.bool).cpu()
        self.t += act.to(self.t.dtype)
        t = self.t.clamp_min(1)
        bc1 = (1 - b1 ** t).to(self.params[0].dtype)
        bc2s = (1 - b2 ** t).sqrt().to(self.params[0].dtype)
        everyone = bool(act.all())
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad if self.wd == 0 else p.grad.add(p, alpha=self.wd)
            step = (self.lr / bc1).to(p.device).view(shape)
            if everyone:  # in place: the common case
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m * step, v.sqrt().div_(bc2s.to(p.device).view(shape)).add_(self.eps), value=-1)
                continue
            a = act.to(p.device).view(shape)
            m.copy_(torch.where(a, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(a, v * b2 + (1 - b2) * g * g, v))
            denom = v.sqrt() / bc2s.to(p.device).view(shape) + self.eps
            p.sub_(torch.where(a, m / denom * step, torch.zeros_like(p)))


def fit_mil_many(sets: list, cfg, seeds: list[int], *, device: torch.device | str = "cpu") -> list:
    """One :class:`~medseg.mil.fit.MILEnsemble` per bag set (``cfg.batch_bags`` must be 1),
    trained side by side; ``seeds[i]`` plays the role of ``fit_mil``'s ``seed`` for ``sets[i]``."""
    if cfg.batch_bags != 1:
        raise ValueError("fit_mil_many trains one bag per step (batch_bags=1)")
    runs = [start_run(bags, cfg, seed) for bags, seed in zip(sets, seeds)]
    return [path[cfg.epochs] for path in train_runs(runs, cfg, [cfg.epochs], padded_step, device=device)]


def padded_step(stack: StackedMIL, runs: list[MILRun], cfg, dev: torch.device) -> Step:
    """Steps of several runs side by side: each run's next bag, padded to the longest and masked;
    :class:`MaskedAdam` leaves a run that sits a step out (its epoch is shorter) untouched."""
    k, e = len(runs), cfg.ensemble
    d = runs[0].feats[0].shape[1]
    opt = MaskedAdam(stack.parameters(), k * e, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lossf = torch.nn.BCEWithLogitsLoss(reduction="none")

    def step(sels: list[np.ndarray]) -> np.ndarray:
        active = np.array([len(sel) > 0 for sel in sels])
        bags = [r.feats[sel[0]] if len(sel) else r.feats[0][:1] for r, sel in zip(runs, sels)]
        nmax = max(b.shape[0] for b in bags)
        x = np.zeros((k, nmax, d), np.float32)
        mask = np.zeros((k, nmax), bool)
        y = np.zeros(k, np.float32)
        for i, (b, r, sel) in enumerate(zip(bags, runs, sels)):
            x[i, :len(b)] = b
            mask[i, :len(b)] = True
            y[i] = r.labels[sel[0]] if len(sel) else 0.0
        xt = torch.from_numpy(x).to(dev).repeat_interleave(e, 0)
        mt = torch.from_numpy(mask).to(dev).repeat_interleave(e, 0)
        yt = torch.from_numpy(y).to(dev).repeat_interleave(e, 0)
        losses = lossf(stack.forward_padded(xt, mt), yt)  # (k*e,)
        opt.zero_grad()
        losses.sum().backward()
        opt.step(torch.from_numpy(active).repeat_interleave(e, 0))
        return losses.detach().cpu().numpy().reshape(k, e).mean(1) * active

    return step
