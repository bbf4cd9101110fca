"""Folds trained side by side (medseg.mil.folds) equal folds trained one by one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medseg.mil.bags import Bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import MILTrainConfig
from medseg.mil.stack import JobAdam, StackedMIL, draw_noise
from medseg.models.mil import MIL_MODELS, create_mil_head


@pytest.mark.parametrize("name", MIL_MODELS)
def test_forward_padded_equals_each_member_on_its_bag(name):
    torch.manual_seed(0)
    members = [create_mil_head(name, in_features=5, embed_dim=8, embed_layers=2) for _ in range(3)]
    st = StackedMIL(members).eval()
    bags = [torch.randn(n, 5) for n in (2, 4, 1)]
    x = torch.zeros(3, 4, 5)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, :len(b)] = b
        x[i, len(b):] = 100.0  # padding must not matter
        mask[i, :len(b)] = True
    ref = torch.stack([m.eval()(b) for m, b in zip(members, bags)]).reshape(-1)
    torch.testing.assert_close(st.forward_padded(x, mask), ref)
    # jobs of 3 members sharing a bag (a seed ensemble): every member on its job's bag
    jobs = StackedMIL(members * 2, share=3).eval()
    ref = torch.stack([m(b) for b in bags[:2] for m in members]).reshape(-1)
    torch.testing.assert_close(jobs.forward_padded(x[:2], mask[:2]), ref)
    torch.testing.assert_close(jobs.forward_padded(x[1:2], mask[1:2], torch.tensor([1])), ref[3:])


def test_draw_noise_is_inverted_dropout_from_its_stream():
    a = draw_noise(np.random.default_rng(4), 2, 3, 50, 40, 0.25)
    b = draw_noise(np.random.default_rng(4), 2, 3, 50, 40, 0.25)
    assert a.shape == (2, 3, 50, 40) and a.dtype == np.float32 and np.array_equal(a, b)
    assert set(np.unique(a).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02          # 12,000 draws: sd of the rate 0.004
    assert draw_noise(np.random.default_rng(4), 0, 3, 5, 4, 0.25).shape == (0, 3, 5, 4)


def test_job_adam_equals_torch_adam_per_member():
    """Two jobs of 2 members and 1 (rows per job: a merged first layer has 1, the others one per member):
    each member's slice follows torch's Adam on that member alone over the steps its job took."""
    torch.manual_seed(0)
    w0, b0 = torch.randn(3, 4, 2), torch.randn(6, 1, 2)     # 3 jobs: rows 1 and 2 per job
    grads = [(torch.randn(3, 4, 2), torch.randn(6, 1, 2)) for _ in range(6)]
    active = [[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]]
    w, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    lrs, wds = [0.01, 0.01, 0.02], [0.1, 0.1, 0.0]
    opt = JobAdam([w, b], 3, lr=lrs, weight_decay=wds)
    for (gw, gb), a in zip(grads, active):
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step(np.array(a, bool))
    for job in range(3):  # reference: torch's Adam on the job's rows alone, over its active steps only
        q = [torch.nn.Parameter(w0[job].clone()), torch.nn.Parameter(b0[2 * job:2 * job + 2].clone())]
        ref = torch.optim.Adam(q, lr=lrs[job], weight_decay=wds[job])
        for (gw, gb), a in zip(grads, active):
            if a[job]:
                q[0].grad, q[1].grad = gw[job].clone(), gb[2 * job:2 * job + 2].clone()
                ref.step()
        torch.testing.assert_close(w.detach()[job], q[0].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.detach()[2 * job:2 * job + 2], q[1].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,average", [("attention_mil", []), ("gated_attention_mil", []),
                                           ("gated_attention_mil", [2, 3])])
def test_cv_side_by_side_equals_one_by_one(rng, model, average):
    feats, labels = [], []
    for b in range(23):  # 23 bags in 5 folds: training sets of 18 and 19 bags (masked steps)
        x = rng.normal(size=(int(rng.integers(1, 7)), 4))
        if b % 2:
            x[0, 0] += 3.0
        feats.append(x); labels.append(b % 2)
    bags = Bags(feats, np.array(labels), [str(i) for i in range(23)])
    cfg = MILTrainConfig(model=model, dropout=0.0, ensemble=2, epochs=4, select_epochs=[], embed_dim=8, attn_dim=8,
                         average_epochs=average)
    par = cross_validate(bags, cfg, folds=5, repeats=2, seed=3, parallel_folds=True)
    seq = cross_validate(bags, cfg, folds=5, repeats=2, seed=3, parallel_folds=False)
    assert par["parallel_folds"] and not seq["parallel_folds"]
    for a, b in zip(par["per_fold"], seq["per_fold"]):
        for k in ("auc", "accuracy", "f1"):
            assert a[k] == pytest.approx(b[k], nan_ok=True)
    assert par["pooled_auc_per_repeat"] == pytest.approx(seq["pooled_auc_per_repeat"])


def _bags(rng, n=23, d=4):
    feats, labels = [], []
    for b in range(n):
        x = rng.normal(size=(int(rng.integers(1, 7)), d))
        if b % 2:
            x[0, 0] += 3.0
        feats.append(x.astype(np.float32)); labels.append(b % 2)
    return Bags(feats, np.array(labels), [str(i) for i in range(n)])


@pytest.mark.parametrize("model,dropout", [("attention_mil", 0.0), ("gated_attention_mil", 0.0),
                                           ("gated_attention_mil", 0.25)])
def test_batched_jobs_give_the_weights_of_separate_fits(rng, model, dropout):
    """Jobs of different training sets (18-20 bags: masked steps), seeds, learning rates, weight decays
    and epoch counts trained as one stack end with the weights of fit_mil on each alone (with dropout too:
    each job draws its masks from its own stream; tolerance 1e-4 absolute: float32 summation order in the
    batched products)."""
    from medseg.mil.fit import fit_mil, predict_bags
    from medseg.mil.folds import Job, fit_jobs, predict_jobs

    bags = _bags(rng)
    base = MILTrainConfig(model=model, dropout=dropout, embed_dim=8, attn_dim=6, epochs=3)
    jobs = [Job(np.arange(0, 20), 1, base, (2, 3)), Job(np.arange(3, 21), 2, replace(base, lr=2e-3)),
            Job(np.arange(4, 23), 3, replace(base, weight_decay=0.1, epochs=2)),
            Job(np.arange(0, 19), 4, replace(base, ensemble=1, epochs=4))]
    got = fit_jobs(bags, jobs)
    for j, snaps in zip(jobs, got):
        assert sorted(snaps) == list(j.epochs())
        for ep, ens in snaps.items():
            ref = fit_mil(bags.subset(j.train), replace(j.cfg, epochs=ep), seed=j.seed)
            for a, b in zip(ens.models, ref.models):
                for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
                    assert ka == kb
                    torch.testing.assert_close(va, vb, rtol=0, atol=1e-4)
            np.testing.assert_allclose(ens.history, ref.history, rtol=1e-4)
    tests = [np.arange(20, 23), np.array([0, 1, 2, 21]), np.arange(0, 4), np.array([22])]
    ens = [snaps[max(snaps)] for snaps in got]
    for p, e, t in zip(predict_jobs(bags, ens, tests), ens, tests):
        np.testing.assert_allclose(p, predict_bags(e, bags.subset(t)), rtol=1e-5, atol=1e-6)


def test_length_groups_partition_and_cut():
    from medseg.mil.folds import length_groups

    # sorted lengths 2 3 4 4 5 5 6 7 | 900 1000, a job costing 32 rows + its padded length: all padded to 1000
    # cost 10 x 1032 = 10,320; cut after the 8 short ones: 8 x 39 + 2 x 1032 = 2,376 (< 0.7 x 10,320); the
    # short part is not cut again (gain too small)
    lens = np.array([3, 1000, 5, 4, 900, 2, 6, 7, 5, 4])
    groups = length_groups(lens)
    assert [sorted(lens[g].tolist()) for g in groups] == [[2, 3, 4, 4, 5, 5, 6, 7], [900, 1000]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    # equal lengths, or no gain: one group in job order; 13 rows against 6 do not pay for a split (FOX:
    # all 10 x 45 = 450 against 9 x 38 + 45 = 387, not below 0.7 x 450), without the fixed cost they would
    assert len(length_groups(np.array([6] * 9 + [13]))) == 1
    assert len(length_groups(np.array([6] * 9 + [13]), fixed=0)) == 2
    for lens in (np.array([5, 5, 5]), np.array([4, 5, 6])):
        (g,) = length_groups(lens)
        assert g.tolist() == list(range(len(lens)))


@pytest.mark.parametrize("name,share,layers", [("attention_mil", 1, 1), ("gated_attention_mil", 1, 1),
                                               ("gated_attention_mil", 2, 2)])
def test_direct_grads_equal_zeroed_and_accumulated_grads_bitwise(name, share, layers):
    """A stack with direct_grads writes each job's gradient rows once per backward: after two steps of
    groups of jobs (a partition, as length_groups makes) the gradients equal, bit for bit, those of a
    plain stack whose gradients are zeroed before each step and accumulated over the groups (5 jobs of
    ``share`` members; with 2 layers, the second is indexed by member, the first by job)."""
    torch.manual_seed(1)
    members = [create_mil_head(name, in_features=6, embed_dim=8, attn_dim=5, embed_layers=layers)
               for _ in range(5 * share)]
    plain = StackedMIL(members, share=share).train()
    direct = StackedMIL(members, share=share, direct_grads=True).train()
    for p in direct.parameters():
        p.grad = torch.full_like(p, 7.0)             # stale values: must be overwritten, not added to
    for step, groups in enumerate([[[0, 2, 4], [1, 3]], [[3], [0, 1, 2, 4]], [[0, 1, 2, 3, 4]]]):
        x = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(step))
        mask = torch.ones(5, 4, dtype=torch.bool)
        mask[1, 3:] = False
        for p in plain.parameters():
            p.grad = None
        for st in (plain, direct):
            total = torch.zeros(())
            for g in groups:
                sel = None if len(g) == 5 else torch.tensor(g)
                total = total + st.forward_padded(x[g], mask[g], sel).square().sum()
            total.backward()
        for (name_, a), b in zip(plain.named_parameters(), direct.parameters()):
            assert torch.equal(a.grad, b.grad), (step, name_)
    with torch.no_grad():            # evaluation and no-grad passes are the plain ones
        torch.testing.assert_close(direct.eval().forward_padded(x, mask), plain.eval().forward_padded(x, mask))


def _weights(res):
    return {(j, e, i, k): v for j, snaps in enumerate(res) for e, ens in snaps.items()
            for i, m in enumerate(ens.models) for k, v in m.state_dict().items()}


def test_parts_in_worker_processes_equal_parts_one_after_another_and_the_whole_stack(monkeypatch):
    """A stack split into parts gives the same weights whether the parts run in worker processes or one
    after another here (the machine's load decides which, never the result), and the weights of the whole
    stack up to float32 rounding of the batched products: every job draws its initialisation, bag orders
    and dropout masks from its own seed (masks drawn otherwise would move weights by ~1e-2)."""
    import medseg.device
    from medseg.mil.crossval import cv_splits
    from medseg.mil.folds import Job, fit_jobs

    bags = _bags(np.random.default_rng(5), n=30, d=6)
    cfg = MILTrainConfig(epochs=3, embed_dim=16, attn_dim=8, dropout=0.25, ensemble=2)
    (tests, trains, seeds), = cv_splits(bags.labels, 5, 1, 0)
    jobs = [Job(tr, sd, cfg, (2, 3)) for tr, sd in zip(trains, seeds)]
    monkeypatch.setattr(medseg.device, "choose_threads", lambda *a, **k: 1)
    here = _weights(fit_jobs(bags, jobs, parts=2))
    monkeypatch.setattr(medseg.device, "choose_threads", lambda *a, **k: 2)
    spawned = _weights(fit_jobs(bags, jobs, parts=2))
    whole = _weights(fit_jobs(bags, jobs, parts=1))
    assert here.keys() == spawned.keys() == whole.keys() and len(here) > 0
    for key in here:
        assert torch.equal(here[key], spawned[key]), key
        torch.testing.assert_close(here[key], whole[key], rtol=0, atol=1e-4)


def test_a_failed_worker_has_its_part_trained_in_process(monkeypatch, caplog):
    import logging

    import medseg.device
    import medseg.mil.folds as folds
    from medseg.mil.crossval import cv_splits

    bags = _bags(np.random.default_rng(6), n=20, d=4)
    cfg = MILTrainConfig(epochs=2, embed_dim=8, attn_dim=4, ensemble=1)
    (_, trains, seeds), = cv_splits(bags.labels, 4, 1, 0)
    jobs = [folds.Job(tr, sd, cfg) for tr, sd in zip(trains, seeds)]
    monkeypatch.setattr(medseg.device, "choose_threads", lambda *a, **k: 2)
    ref = _weights(folds.fit_jobs(bags, jobs, parts=2))
    import medseg.mil.workers as workers

    monkeypatch.setattr(workers.Worker, "result", lambda self: "exit 1: boom")
    with caplog.at_level(logging.WARNING, logger="medseg.training.mil"):
        got = _weights(folds.fit_jobs(bags, jobs, parts=2))
    assert "worker process failed (exit 1: boom)" in caplog.text
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_progress_of_a_split_stack_adds_up_to_its_epochs(monkeypatch):
    """Two parts, 3 epochs: trained one after another here, each part's epoch is half a stack epoch (6 ticks
    of 0.5); with a worker process training the second part meanwhile, the first part's epochs count for
    both (3 ticks of 1). Either way the ticks add up to the 3 epochs, so the time left is not reported as
    0 while a part is still to train."""
    import medseg.device
    from medseg.mil.crossval import cv_splits
    from medseg.mil.folds import Job, fit_jobs

    bags = _bags(np.random.default_rng(7), n=20, d=4)
    cfg = MILTrainConfig(epochs=3, embed_dim=8, attn_dim=4, ensemble=1)
    (_, trains, seeds), = cv_splits(bags.labels, 4, 1, 0)
    jobs = [Job(tr, sd, cfg) for tr, sd in zip(trains, seeds)]
    for threads, want in ((1, [0.5] * 6), (2, [1.0] * 3)):
        ticks: list[float] = []
        monkeypatch.setattr(medseg.device, "choose_threads", lambda *a, t=threads, **k: t)
        fit_jobs(bags, jobs, parts=2, progress=ticks.append)
        assert ticks == want, threads
    ticks = []
    fit_jobs(bags, jobs, parts=1, progress=ticks.append)
    assert ticks == [1, 1, 1]
