"""MIL aggregators, bag loading, metrics, training and `medseg mil cv`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch

from medseg.metrics import classification as M
from medseg.mil.bags import load_bags
from medseg.mil.stack import StackedMIL
from medseg.models.mil import MIL_MODELS, create_mil_head, segment_softmax
from tests.paths import shared_path


def _bags(n=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [2, 5, 1][:n]
    x = torch.randn(sum(sizes), d, generator=g)
    idx = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes))
    return x, idx, sizes


def test_segment_softmax_matches_per_bag_softmax():
    x, idx, sizes = _bags()
    s = x[:, 0]
    out = segment_softmax(s, idx, 3)
    parts = torch.split(s, sizes)
    ref = torch.cat([torch.softmax(p, 0) for p in parts])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", MIL_MODELS)
def test_models_batch_equals_single_bags_and_backprop(name):
    torch.manual_seed(0)
    net = create_mil_head(name, in_features=6, embed_dim=8)
    net.eval()
    x, idx, sizes = _bags()
    batch = net(x, idx, 3)
    single = torch.stack([net(p)[0] for p in torch.split(x, sizes)])
    torch.testing.assert_close(batch, single)
    # permutation invariance inside a bag
    perm = torch.tensor([1, 0, 6, 5, 4, 3, 2, 7])
    torch.testing.assert_close(net(x[perm], idx[perm], 3), batch)
    a = net.attention(x, idx, 3)
    torch.testing.assert_close(torch.stack([p.sum() for p in torch.split(a, sizes)]), torch.ones(3))
    net.train()
    net(x, idx, 3).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_attention_by_hand():
    """Attention-MIL with identity-like weights: z = sum softmax(w.tanh(Vh)) h, checked by hand."""
    net = create_mil_head("attention_mil", in_features=2, embed_layers=0, attn_dim=1)
    with torch.no_grad():
        net.attn_v.weight.copy_(torch.tensor([[1.0, 0.0]])); net.attn_v.bias.zero_()
        net.attn_w.weight.fill_(1.0); net.attn_w.bias.zero_()
        net.head.weight.copy_(torch.tensor([[0.0, 1.0]])); net.head.bias.zero_()
    x = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    s = np.tanh(np.array([0.0, 1.0]))
    a = np.exp(s) / np.exp(s).sum()
    with torch.no_grad():
        assert float(net(x)) == pytest.approx(a[0] * 1 + a[1] * 3, rel=1e-6)
        att = net.attention(x).numpy()
    np.testing.assert_allclose(att, a, rtol=1e-6)


def test_head_outputs_pinned():
    """Outputs of the heads on a fixed seed, recorded before attention pooling was written once
    (models.mil.pool_bags): every layout (bag index, one bag, stacked, padded) gives the same numbers."""
    torch.manual_seed(0)
    ms = [create_mil_head("gated_attention_mil", in_features=3, embed_dim=4, attn_dim=3) for _ in range(2)]
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3).sin()
    idx = torch.tensor([0, 0, 1, 1, 1])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    st = StackedMIL(ms)
    close = dict(rel=1e-6, abs=1e-7)
    with torch.no_grad():
        assert ms[0](x).tolist() == pytest.approx([0.34768810868263245], **close)
        assert ms[0](x, idx, 2).tolist() == pytest.approx([0.3548051714897156, 0.3429480195045471], **close)
        assert st(x).reshape(-1).tolist() == pytest.approx([0.34768810868263245, -0.27959299087524414], **close)
        assert st(x, idx, 2).reshape(-1).tolist() == pytest.approx(
            [0.3548051714897156, 0.3429480195045471, -0.25661346316337585, -0.2947503626346588], **close)
        assert st.forward_padded(torch.stack([x, x]), mask).tolist() == pytest.approx(
            [0.34768810868263245, -0.25661346316337585], **close)
        shared = StackedMIL(ms, share=2)   # one job of both members: its first layer as one product
        assert shared(x, idx, 2).reshape(-1).tolist() == pytest.approx(st(x, idx, 2).reshape(-1).tolist(), **close)
        assert shared.forward_padded(x[None, :2], mask[1:, :2]).tolist() == pytest.approx(
            [0.3548051714897156, -0.25661346316337585], **close)
        for name, want in (("mean_mil", [0.13365688920021057, 0.1586368978023529]),
                           ("max_mil", [0.0857052281498909, 0.11269360035657883])):
            torch.manual_seed(0)
            assert create_mil_head(name, in_features=3, embed_dim=4)(x, idx, 2).tolist() == pytest.approx(want, **close)


@pytest.mark.parametrize("name", MIL_MODELS)
@pytest.mark.parametrize("share", [1, 3])
def test_stacked_equals_members(name, share):
    torch.manual_seed(1)
    members = [create_mil_head(name, in_features=6, embed_dim=8, embed_layers=2) for _ in range(3)]
    st = StackedMIL(members, share=share)
    x, idx, _ = _bags()
    ref = torch.stack([m(x, idx, 3) for m in members])
    torch.testing.assert_close(st(x, idx, 3), ref)
    with torch.no_grad():
        for p in st.parameters():
            p.add_(0.1)
    st.unstack(members)
    torch.testing.assert_close(st(x, idx, 3), torch.stack([m(x, idx, 3) for m in members]))


def test_metrics_match_sklearn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)  # ties on purpose
    pred = (p >= 0.5).astype(int)
    assert M.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p))
    assert M.balanced_accuracy(y, pred) == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert M.f1_score(y, pred) == pytest.approx(sk.f1_score(y, pred))
    assert M.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
    assert np.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_t_interval_matches_scipy():
    from scipy import stats
    v = [0.8, 0.9, 1.0, 0.85]
    m, lo, hi = M.t_interval(v)
    ref = stats.t.interval(0.95, 3, loc=np.mean(v), scale=stats.sem(v))
    assert (lo, hi) == pytest.approx(ref)
    assert m == pytest.approx(0.8875)
    # clipped to the metric's range: [0.9, 1, 1] has mean 0.9667, sem 0.0333, t(0.975, 2) = 4.3027 -> the
    # interval 0.8232 .. 1.1101 (scipy.stats.t.interval) becomes 0.8232 .. 1
    m, lo, hi = M.t_interval([0.9, 1.0, 1.0], bounds=(0.0, 1.0))
    assert (m, lo, hi) == pytest.approx((0.966667, 0.823245, 1.0), abs=1e-6)
    assert M.t_interval([0.9, 1.0, 1.0])[2] == pytest.approx(1.110088, abs=1e-6)


def _write_csv(path, rows):
    np.savetxt(path, np.asarray(rows, dtype=float), delimiter=",", fmt="%g")


def test_load_csv_and_mat(tmp_path):
    _write_csv(tmp_path / "b.csv", [[1, 7, 0.5, 1], [1, 7, 0.1, 2], [0, 3, 0.2, 3]])
    b = load_bags(tmp_path / "b.csv")
    assert b.ids == ["7", "3"] and b.labels.tolist() == [1, 0]
    assert b.features[0].shape == (2, 2) and b.instance_labels is None
    scipy.io.savemat(tmp_path / "a.mat", {
        "features": scipy.sparse.csc_matrix(np.arange(8.0).reshape(4, 2)),
        "labels": scipy.sparse.csc_matrix(np.array([[-1, 1, -1, -1]], float)),
        "bag_ids": np.array([[1, 1, 2, 2]], np.uint8)})
    a = load_bags(tmp_path / "a.mat")
    assert a.labels.tolist() == [1, 0] and a.instance_labels[0].tolist() == [0, 1]
    np.testing.assert_array_equal(a.features[1], [[4, 5], [6, 7]])


def test_bad_bag_files(tmp_path):
    from medseg.errors import InputError
    _write_csv(tmp_path / "mixed.csv", [[1, 7, 0.5], [0, 7, 0.1]])
    with pytest.raises(InputError, match="different labels"):
        load_bags(tmp_path / "mixed.csv")
    _write_csv(tmp_path / "lab.csv", [[2, 7, 0.5]])
    with pytest.raises(InputError, match="labels must be"):
        load_bags(tmp_path / "lab.csv")
    (tmp_path / "t.csv").write_text("1,2,abc\n")
    with pytest.raises(InputError, match="numeric CSV"):
        load_bags(tmp_path / "t.csv")
    with pytest.raises(InputError, match="no such file"):
        load_bags(tmp_path / "none.csv")


def test_stratified_folds_partition():
    from medseg.mil.fit import stratified_folds
    y = np.array([0] * 13 + [1] * 7)
    folds = stratified_folds(y, 5, np.random.default_rng(0))
    allidx = np.sort(np.concatenate(folds))
    np.testing.assert_array_equal(allidx, np.arange(20))
    assert all(1 <= y[f].sum() <= 2 for f in folds)


def _toy_bags(rng, n=40):
    """Positive bags hold one instance shifted by +6 in feature 0 (the witness)."""
    rows = []
    for b in range(n):
        lab = b % 2
        k = int(rng.integers(3, 8))
        x = rng.normal(size=(k, 4))
        if lab:
            x[rng.integers(k), 0] += 6.0
        rows += [[lab, b, *r] for r in x]
    return rows


def test_fit_learns_witness_and_cli(tmp_path, rng):
    from medseg.cli.main import main
    from medseg.mil.fit import MILTrainConfig, attention_weights, fit_mil, predict_bags
    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 60))
    bags = load_bags(tmp_path / "toy.csv")
    cfg = MILTrainConfig.from_dict({"epochs": 15, "ensemble": 2, "lr": 2e-3})
    ens = fit_mil(bags.subset(range(40)), cfg, seed=0)
    test = bags.subset(range(40, 60))
    prob = predict_bags(ens, test)
    assert M.roc_auc(test.labels, prob) > 0.9
    # attention picks the witness in a positive bag
    pos = int(np.flatnonzero(test.labels == 1)[0])
    x = test.features[pos]
    assert int(np.argmax(attention_weights(ens, x))) == int(np.argmax(x[:, 0]))
    rc = main(["mil", "cv", "--data", str(tmp_path / "toy.csv"), "--folds", "3", "--repeats", "2",
               "--out", str(tmp_path / "cv"), "--set", "epochs=3", "--set", "ensemble=1"])
    assert rc == 0
    s = json.loads((tmp_path / "cv" / "summary.json").read_text())
    for k in ("accuracy_mean", "accuracy_std", "auc_mean", "auc_std"):
        assert 0.0 <= s[k] <= 1.0
    assert len(s["per_fold"]) == 6
    part = json.loads((tmp_path / "cv" / "summary.partial.json").read_text())  # after repeat 1 of 2
    assert part["repeats"] == 1 and part["per_fold"] == s["per_fold"][:3]
    assert s["accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in s["per_fold"]]))


def test_cli_rejects_unknown_key(tmp_path):
    from medseg.cli.main import main
    _write_csv(tmp_path / "b.csv", [[1, 1, 0.5], [0, 2, 0.1]])
    assert main(["mil", "cv", "--data", str(tmp_path / "b.csv"), "--out", str(tmp_path / "o"),
                 "--set", "epoch=3"]) == 2


def test_musk1_counts():
    b = load_bags(shared_path("mil", "musk1.csv"))
    # UCI MUSK1: 92 molecules (47 musk), 476 conformations, 166 features
    assert len(b) == 92 and int(b.labels.sum()) == 47
    assert sum(f.shape[0] for f in b.features) == 476 and b.n_features == 166
    m = load_bags(shared_path("mil", "andrews_mat", "musk1norm_matlab.mat"))
    assert len(m) == 92 and int(m.labels.sum()) == 47


def test_average_epochs_is_the_mean_of_the_run_snapshots(tmp_path, rng):
    """``average_epochs``: the ensemble holds the networks of one run at those epoch counts (each seed),
    and its probability is the plain mean of the snapshot ensembles' probabilities (fit_mil_path)."""
    from dataclasses import replace

    from medseg.errors import ConfigError
    from medseg.mil.fit import MILTrainConfig, fit_mil, fit_mil_path, load_mil, predict_bags, save_mil
    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 30))
    bags = load_bags(tmp_path / "toy.csv")
    cfg = MILTrainConfig.from_dict({"epochs": 4, "ensemble": 2, "average_epochs": [1, 3], "dropout": 0.0})
    ens = fit_mil(bags.subset(range(20)), cfg, seed=5)
    snaps = fit_mil_path(bags.subset(range(20)), replace(cfg, average_epochs=[]), [1, 3, 4], seed=5)
    assert len(ens.models) == 4 and ens.config.average_epochs == [1, 3]
    for got, want in zip(ens.models, snaps[1].models + snaps[3].models):
        for (ka, a), (kb, b) in zip(got.state_dict().items(), want.state_dict().items()):
            assert ka == kb and torch.equal(a, b)
    test = bags.subset(range(20, 30))
    mean = (predict_bags(snaps[1], test) + predict_bags(snaps[3], test)) / 2
    np.testing.assert_allclose(predict_bags(ens, test), mean, rtol=0, atol=1e-6)   # float32 means
    back = load_mil(save_mil(ens, tmp_path / "m.safetensors"))
    np.testing.assert_allclose(predict_bags(back, test), mean, rtol=0, atol=1e-6)
    for bad in ({"average_epochs": [0]}, {"average_epochs": [41]}, {"average_epochs": "10"},
                {"average_epochs": [10], "select_epochs": [10, 20]}):
        with pytest.raises(ConfigError, match="average_epochs"):
            MILTrainConfig.from_dict(bad)


def test_shipped_mil_yaml_is_the_built_in_default():
    """configs/wsi/mil.yaml says it holds MILTrainConfig's values: a default changed in one place only would
    make `--config configs/wsi/mil.yaml` and the built-in default two different procedures."""
    from pathlib import Path

    import yaml

    from medseg.mil.fit import MILTrainConfig

    text = (Path(__file__).resolve().parents[2] / "configs" / "wsi" / "mil.yaml").read_text()
    shipped = MILTrainConfig.from_dict(yaml.safe_load(text)["mil"])
    assert shipped == MILTrainConfig()
    assert (shipped.epochs, shipped.ensemble, shipped.embed_layers, shipped.attn_dim) == (20, 3, 2, 64)
