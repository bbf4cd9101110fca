"""Epoch count of MIL training chosen by inner cross-validation (medseg.mil.select)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.mil import select as mil_select
from medseg.mil.bags import Bags, load_bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import MILTrainConfig, fit_mil, fit_mil_path, predict_bags
from tests.mil.test_fit import _toy_bags, _write_csv


@pytest.fixture
def toy(tmp_path, rng):
    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 30))
    return load_bags(tmp_path / "toy.csv")


def test_snapshots_equal_separate_fits(toy):
    cfg = MILTrainConfig(model="attention_mil", epochs=4)
    path = fit_mil_path(toy, cfg, [4, 2, 6], seed=3)
    assert sorted(path) == [2, 4, 6]
    for e in (2, 4):
        alone = fit_mil(toy, MILTrainConfig(model="attention_mil", epochs=e), seed=3)
        np.testing.assert_array_equal(predict_bags(path[e], toy), predict_bags(alone, toy))
        assert path[e].config.epochs == e and len(path[e].history) == e
    assert not np.array_equal(predict_bags(path[2], toy), predict_bags(path[6], toy))


def test_pick_epochs_order():
    # accuracy first, then log-loss, then fewer epochs (worked out by hand)
    assert mil_select.pick_epochs({10: (0.8, 0.3), 20: (0.9, 0.6), 40: (0.9, 0.5)}) == 40
    assert mil_select.pick_epochs({10: (0.9, 0.5), 20: (0.9, 0.5), 40: (0.7, 0.1)}) == 10
    with pytest.raises(ConfigError):
        mil_select.pick_epochs({})


def test_inner_scores_are_pooled_out_of_fold(toy):
    cfg = MILTrainConfig(model="attention_mil", select_epochs=[1, 3], inner_folds=3)
    scores = mil_select.inner_cv_scores(toy, cfg, seed=5)
    # the same pooled out-of-fold accuracy, recomputed with separate fits per inner fold
    from medseg.mil.fit import stratified_folds

    tests = stratified_folds(toy.labels, 3, np.random.default_rng(5 + 104729))
    for e in (1, 3):
        oof = np.zeros(len(toy))
        for j, t in enumerate(tests):
            tr = np.setdiff1d(np.arange(len(toy)), t)
            ens = fit_mil(toy.subset(tr), MILTrainConfig(model="attention_mil", epochs=e), seed=5 + 1009 * (j + 1))
            oof[t] = predict_bags(ens, toy.subset(t))
        assert scores[e][0] == pytest.approx(np.mean((oof >= 0.5) == toy.labels))


def test_selection_never_sees_the_test_fold(toy, monkeypatch):
    seen: list[set[str]] = []
    real = mil_select.fit_mil_path

    def spy(bags, cfg, epochs, **kw):
        seen.append(set(bags.ids))
        return real(bags, cfg, epochs, **kw)

    monkeypatch.setattr(mil_select, "fit_mil_path", spy)
    cfg = MILTrainConfig(model="attention_mil", select_epochs=[1, 2], inner_folds=2)
    s = cross_validate(toy, cfg, folds=3, repeats=1, seed=0)
    assert len(seen) == 3 * 2  # 2 inner fits per outer fold
    from medseg.mil.fit import stratified_folds

    tests = stratified_folds(toy.labels, 3, np.random.default_rng(0))
    for f, t in enumerate(tests):
        test_ids = {toy.ids[i] for i in t}
        for inner in seen[2 * f:2 * f + 2]:
            assert not inner & test_ids
    assert all(p["epochs"] in (1, 2) for p in s["per_fold"])
    assert sum(s["epochs_chosen"].values()) == 3


def test_config_checks():
    with pytest.raises(ConfigError):
        MILTrainConfig.from_dict({"select_epochs": "10,20"})
    with pytest.raises(ConfigError):
        MILTrainConfig.from_dict({"select_epochs": [10, 0]})
    with pytest.raises(ConfigError):
        MILTrainConfig.from_dict({"select_epochs": [10], "inner_folds": 1})
    assert MILTrainConfig.from_dict({"select_epochs": [5, 10]}).inner_folds == 3
    # default: fixed epochs (no inner CV)
    assert MILTrainConfig.from_dict({}).select_epochs == []
    assert MILTrainConfig.from_dict({"epochs": 7, "select_epochs": [3]}).select_epochs == [3]


def test_cli_select_epochs(tmp_path, rng):
    from medseg.cli.main import main

    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 30))
    rc = main(["mil", "cv", "--data", str(tmp_path / "toy.csv"), "--folds", "3", "--out", str(tmp_path / "cv"),
               "--select-epochs", "1", "3", "--inner-folds", "2", "--set", "ensemble=1"])
    assert rc == 0
    s = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert s["config"]["select_epochs"] == [1, 3] and s["config"]["inner_folds"] == 2
    assert sum(s["epochs_chosen"].values()) == 3
    assert {p["epochs"] for p in s["per_fold"]} <= {1, 3}
    assert all(set(p["inner"]) == {"1", "3"} for p in s["per_fold"])


def test_too_few_bags_for_inner_folds(caplog):
    # 2 positive bags cannot be spread over 3 inner folds: a clear error, not a one-class fit;
    # fit_mil_selected then warns and trains for cfg.epochs
    feats = [np.ones((2, 3)) * i for i in range(8)]
    bags = Bags(feats, np.array([1, 1, 0, 0, 0, 0, 0, 0]), [str(i) for i in range(8)])
    from medseg.errors import InputError

    with pytest.raises(InputError, match="inner 3-fold CV needs at least 3"):
        mil_select.inner_cv_scores(bags, MILTrainConfig(select_epochs=[1], inner_folds=3), seed=0)
    ens, chosen = mil_select.fit_mil_selected(bags, MILTrainConfig(epochs=2, select_epochs=[1], inner_folds=3))
    assert chosen == {"epochs": 2, "inner": "skipped: too few bags"} and "lower inner_folds" in caplog.text
    ens, chosen = mil_select.fit_mil_selected(bags, MILTrainConfig(select_epochs=[1, 2], inner_folds=2), seed=0)
    assert chosen["epochs"] in (1, 2) and len(ens.models) == MILTrainConfig().ensemble
