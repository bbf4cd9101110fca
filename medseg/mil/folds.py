"""Train the MIL aggregators of many training sets side by side: all folds of all repeats of a
cross-validation, and all inner-CV candidates of a model selection (:func:`fit_jobs`).

Tiny MIL networks trained one bag per step are bound by per-operation overhead and memory traffic, not
arithmetic, so the networks of every :class:`Job` of one structure (:func:`structure_key`) train as one
stacked network (:class:`~medseg.mil.stack.StackedMIL`; a job's seed ensemble shares its first layer's
product): each step, every job's networks get the next bag of their own epoch order, gathered from the data
set padded once (:class:`PaddedBags`) and masked; jobs whose bags of the step are short run apart from the
few with long ones, so that one long bag does not pad them all (:func:`length_groups`). The stack's
backward writes each gradient into place (``direct_grads``), so gradients are never zeroed.
Each job keeps what :func:`~medseg.mil.fit.fit_mil` would give it: its own standardisation, initial
weights, per-epoch bag order and dropout masks from its seed, Adam updates of its own with its own learning
rate and weight decay (a job whose epoch is shorter skips the step: :class:`~medseg.mil.stack.JobAdam`), and
snapshots at its own epoch counts: the weights equal training the jobs one by one up to float32 rounding
(tests/mil/test_folds.py: max abs. difference below 1e-4 after a few epochs, with dropout).
:func:`predict_jobs` evaluates the test bags of every job the same way.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from medseg.mil.bags import Bags
from medseg.mil.fit import MILEnsemble, few_threads, start_run
from medseg.mil.stack import JobAdam, StackedMIL, draw_noise
from medseg.mil.workers import Job, Worker, decode_task, encode_result, encode_task

log = logging.getLogger("medseg.training.mil")

__all__ = ["Job", "PaddedBags", "fit_jobs", "predict_jobs", "structure_key", "stack_bytes",
           "length_groups", "STACK_LIMIT_BYTES"]

STACK_LIMIT_BYTES = 2 << 30  # above this, cross-validation trains folds one by one (slide bags of 10^4 tiles)
MAX_PARTS = 8                # parts (processes) one stack is split into at most


def structure_key(cfg) -> tuple:
    """What networks must share to be trained in one stack: everything but ``lr``, ``weight_decay``
    and the epoch count (those may differ per member)."""
    return (cfg.model, cfg.embed_dim, cfg.attn_dim, cfg.embed_layers, cfg.dropout, cfg.ensemble, cfg.standardize)


class PaddedBags:
    """All bags of a data set padded to the longest, once: ``x`` ``(B, N, D)`` float32 and the bag
    lengths; :meth:`take` standardises a gathered batch per member (in float64, as
    :meth:`~medseg.mil.fit.MILEnsemble.transform`)."""

    def __init__(self, bags: Bags, device: torch.device):
        lens = np.array([len(f) for f in bags.features])
        x = np.zeros((len(bags), int(lens.max()), bags.n_features), np.float32)
        for i, f in enumerate(bags.features):
            x[i, :len(f)] = f
        self.x, self.lens, self.dev = torch.from_numpy(x).to(device), lens, device
        self.lens_t = torch.from_numpy(lens).to(device)
        self.labels = torch.from_numpy(np.asarray(bags.labels, np.float32)).to(device)

    def take(self, gid: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
             n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags ``gid`` ``(M,)`` -> standardised ``(M, n, D)`` float32 (``n``: the longest of them unless
        given) and the mask of real instances; ``mean``/``std`` ``(M, 1, D)`` float64."""
        n = int(self.lens[gid].max()) if n is None else int(n)
        g = torch.from_numpy(gid).to(self.dev)
        x = ((self.x[g, :n].double() - mean) / std).float()
        return x, torch.arange(n, device=self.dev) < self.lens_t[g].unsqueeze(1)


def stack_bytes(bags: Bags, members: int) -> int:
    """Memory of one padded step of ``members`` networks (float64 standardisation of the longest
    bag for each) plus the padded data set: what side-by-side training needs at least."""
    n = max((len(f) for f in bags.features), default=0)
    return n * bags.n_features * (8 * members + 4 * len(bags))


def fit_jobs(bags: Bags, jobs: list[Job], *, device: torch.device | str = "cpu",
             progress: Callable[[float], None] | None = None,
             parts: int | None = None) -> list[dict[int, MILEnsemble]]:
    """Train every job; jobs of one :func:`structure_key` train side by side as one stacked network,
    split into ``parts`` stacks that run in parallel processes on the CPU (:func:`_train_split`; None:
    one per core this process may use).
    Returns per job its snapshot ensembles by epoch count. ``progress(epochs)`` is called after each
    epoch trained here, with the share of a stack's epoch done by then (1 for a stack in one part; the
    parts of a split stack add up to 1 per epoch: :func:`_train_split`)."""
    dev = torch.device(device)
    data = PaddedBags(bags, dev)
    out: list[dict[int, MILEnsemble]] = [{} for _ in jobs]
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        if j.cfg.batch_bags != 1:
            raise ValueError("side-by-side training takes one bag per step (batch_bags=1)")
        groups.setdefault(structure_key(j.cfg), []).append(i)
    for idx in groups.values():
        for i, snaps in zip(idx, _train_split(bags, data, [jobs[i] for i in idx], dev, progress, parts)):
            out[i] = snaps
    return out


def length_groups(lens: np.ndarray, *, depth: int = 2, gain: float = 0.7, fixed: int = 32) -> list[np.ndarray]:
    """Jobs of one step split by the length of their bags, so that a few long bags do not pad every
    job: the jobs sorted by length are cut where running each part padded to its longest bag costs least,
    if that is below ``gain`` times running all padded to the longest; the shorter part is cut again
    (``depth`` parts at most + 1). A job costs ``fixed`` + its padded length in rows: its weights are read
    whatever its bag length (a product of 12 rows takes ~1.5x one of 6, not 2x), and a split gathers them.
    Returns index arrays, together a partition of the jobs."""
    order = np.argsort(lens, kind="stable")
    srt = lens[order]
    m = len(srt)
    if depth == 0 or m < 2 or srt[0] == srt[-1]:
        return [np.arange(m)]
    k = np.arange(m - 1)
    cost = (k + 1) * (srt[:-1] + fixed) + (m - k - 1) * (srt[-1] + fixed)
    best = int(np.argmin(cost))
    if cost[best] >= gain * m * (srt[-1] + fixed):
        return [np.arange(m)]
    low = order[:best + 1]
    return [low[g] for g in length_groups(lens[low], depth=depth - 1, gain=gain, fixed=fixed)] + [order[best + 1:]]


def _standardisers(ensembles: list[MILEnsemble], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each job's feature mean and std as float64 ``(jobs, 1, D)`` (for :meth:`PaddedBags.take`)."""
    def per_job(rows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(rows)).unsqueeze(1).to(dev)

    return per_job([e.mean for e in ensembles]), per_job([e.std for e in ensembles])


def _train_split(bags: Bags, data: PaddedBags, jobs: list[Job], dev: torch.device,
                 progress: Callable[[float], None] | None, parts: int | None) -> list[dict[int, MILEnsemble]]:
    """:func:`_train_stack` of ``jobs`` split into ``parts`` stacks of whole jobs (None: one per core this
    process may use, :func:`medseg.device.available_cpus`, on the CPU; 1 on CUDA). A job draws everything
    random from its own seed, so a part trains its jobs as the whole stack would, up to float32 rounding of
    the batched products over fewer jobs (~1e-6 a step). The parts run in as many processes as the cores
    other processes leave free (:func:`medseg.device.choose_threads`), the rest one after another here:
    the result never depends on the machine's load (tests/mil/test_folds.py). A worker that fails has its
    part trained here. Progress: an epoch of the first part counts for itself and the parts the workers
    train meanwhile (they keep about its pace), an epoch of a part trained here afterwards for itself."""
    n_parts = _part_count(dev, len(jobs), parts)
    if n_parts <= 1:
        return _train_stack(bags, data, jobs, dev, progress)
    from medseg.device import choose_threads

    bounds = np.linspace(0, len(jobs), n_parts + 1).round().astype(int)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    workers = min(n_parts, choose_threads()) - 1
    children = [Worker(encode_task(bags, jobs, str(dev), part), part) for part in ranges[1:1 + workers]]
    results: dict[tuple[int, int], list[dict[int, MILEnsemble]]] = {}

    def share(parts_per_epoch: int) -> Callable[[float], None] | None:
        return None if progress is None else (lambda n: progress(n * parts_per_epoch / n_parts))

    try:
        results[ranges[0]] = _train_stack(bags, data, jobs, dev, share(1 + len(children)), ranges[0])
        for part in ranges[1 + workers:]:
            results[part] = _train_stack(bags, data, jobs, dev, share(1), part)
        for child in children:
            res = child.result()
            if not isinstance(res, list):
                log.warning("MIL training: a worker process failed (%s); training its part here", res)
                res = _train_stack(bags, data, jobs, dev, None, child.part)
            results[child.part] = res
    finally:
        for child in children:
            child.stop()
    return [r for part in ranges for r in results[part]]


def _part_count(dev: torch.device, n_jobs: int, parts: int | None) -> int:
    if parts is None:
        from medseg.device import available_cpus

        parts = available_cpus() if dev.type == "cpu" else 1
    return max(1, min(int(parts), n_jobs, MAX_PARTS))


def worker_main() -> None:
    """A worker process of :func:`_train_split` (:class:`medseg.mil.workers.Worker`): read the task on
    standard input, train its part, write the result on standard output."""
    import sys

    bags, jobs, device, part = decode_task(sys.stdin.buffer.read())
    dev = torch.device(device)
    sys.stdout.buffer.write(encode_result(_train_stack(bags, PaddedBags(bags, dev), jobs, dev, None, part)))
    sys.stdout.buffer.flush()


def _train_stack(bags: Bags, data: PaddedBags, jobs: list[Job], dev: torch.device,
                 progress: Callable[[float], None] | None,
                 part: tuple[int, int] | None = None) -> list[dict[int, MILEnsemble]]:
    """Train the networks of ``jobs[part[0]:part[1]]`` (default: all) as one stack; returns their snapshots.
    Each job draws its initialisation, bag orders and dropout masks from its own seed, so what it learns
    does not depend on the other jobs of the stack (up to float32 rounding of the batched products)."""
    k0, k1 = part if part is not None else (0, len(jobs))
    own = jobs[k0:k1]
    runs = [start_run(bags.subset(j.train), j.cfg, j.seed) for j in own]
    e, n_jobs = own[0].cfg.ensemble, len(own)
    flat = [m for r in runs for m in r.members]
    stack = StackedMIL(flat, share=e, direct_grads=True).to(dev)   # every member runs once a step
    opt = JobAdam(stack.parameters(), n_jobs, lr=[j.cfg.lr for j in own],
                  weight_decay=[j.cfg.weight_decay for j in own])
    mean, std = _standardisers([r.ens for r in runs], dev)
    sizes = np.array([len(j.train) for j in own])
    layers, width = stack.noise_shape
    p_drop = own[0].cfg.dropout
    lossf = torch.nn.BCEWithLogitsLoss(reduction="none")
    out: list[dict[int, MILEnsemble]] = [{} for _ in own]
    last = max(max(j.epochs()) for j in own)
    stack.train()
    with few_threads(dev):
        for epoch in range(1, last + 1):
            order = np.full((n_jobs, sizes.max()), -1)
            for k, (r, j) in enumerate(zip(runs, own)):
                order[k, :sizes[k]] = j.train[r.rng.permutation(sizes[k])]
            tot = torch.zeros(len(flat), dtype=torch.float64, device=dev)
            for s in range(sizes.max()):
                gid = order[:, s]
                active = gid >= 0
                gid = np.where(active, gid, gid[active][0])   # jobs sitting the step out run on a bag, unused
                lens = data.lens[gid]
                noise = np.zeros((layers, len(flat), int(lens.max()), width), np.float32)
                for k in np.flatnonzero(active).tolist():
                    noise[:, k * e:(k + 1) * e, :lens[k]] = draw_noise(runs[k].noise, layers, e, int(lens[k]), width,
                                                                      p_drop)
                losses = torch.zeros(len(flat), dtype=torch.float64, device=dev)
                total = torch.zeros((), dtype=torch.float32, device=dev)
                groups = length_groups(lens)
                for grp in groups:
                    n = int(lens[grp].max())
                    sel = None if len(groups) == 1 else torch.from_numpy(grp).to(dev)
                    mem = (grp[:, None] * e + np.arange(e)).reshape(-1)
                    x, mask = data.take(gid[grp], mean[grp], std[grp], n=n)
                    nz = [torch.from_numpy(a[mem, :n] if sel is not None else a[:, :n]).to(dev) for a in noise]
                    lg = lossf(stack.forward_padded(x, mask, sel, nz),
                               data.labels[torch.from_numpy(gid[grp]).to(dev)].repeat_interleave(e))
                    total = total + lg.sum()
                    losses[torch.from_numpy(mem).to(dev)] = lg.detach().double()
                total.backward()
                opt.step(active)
                tot += losses * torch.from_numpy(np.repeat(active, e)).to(dev)
            per_run = tot.cpu().numpy().reshape(n_jobs, e).mean(1) / sizes
            for r, t in zip(runs, per_run):
                r.ens.history.append(float(t))
            want = [k for k, j in enumerate(own) if epoch in j.epochs()]
            if want:
                snap = stack.unstack(copy.deepcopy(flat))
                for k in want:
                    models = [m.eval() for m in snap[k * e:(k + 1) * e]]
                    out[k][epoch] = replace(runs[k].ens, models=models, config=replace(own[k].cfg, epochs=epoch),
                                            history=list(runs[k].ens.history))
            if progress is not None:
                progress(1)
    return out


@torch.no_grad()
def predict_jobs(bags: Bags, ensembles: list[MILEnsemble], tests: list[np.ndarray], *,
                 device: torch.device | str = "cpu") -> list[np.ndarray]:
    """Mean ensemble probability of each ``tests[k]`` bag under ``ensembles[k]``: ensembles of one
    structure evaluated as one stacked network, one bag of every member per pass."""
    dev = torch.device(device)
    data = PaddedBags(bags, dev)
    out = [np.zeros(len(t)) for t in tests]
    groups: dict[tuple, list[int]] = {}
    for k, ens in enumerate(ensembles):
        groups.setdefault(structure_key(ens.config) + (len(ens.models),), []).append(k)
    for idx in groups.values():
        e = len(ensembles[idx[0]].models)
        stack = StackedMIL([m for k in idx for m in ensembles[k].models], share=e).to(dev).eval()
        mean, std = _standardisers([ensembles[k] for k in idx], dev)
        n = max(len(tests[k]) for k in idx)
        with few_threads(dev):
            for s in range(n):
                gid = np.array([tests[k][min(s, len(tests[k]) - 1)] for k in idx])
                x, mask = data.take(gid, mean, std)
                p = torch.sigmoid(stack.forward_padded(x, mask)).cpu().numpy().reshape(len(idx), e).mean(1)
                for k, pk in zip(idx, p):
                    if s < len(tests[k]):
                        out[k][s] = pk
    return out
