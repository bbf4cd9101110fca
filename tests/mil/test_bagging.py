"""Bagging: the networks of the inner folds' training parts averaged instead of a refit (medseg.mil.grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.mil import grid as mil_grid
from medseg.mil.bags import load_bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import (
    MILTrainConfig,
    attention_weights,
    empty_ensemble,
    fit_mil,
    load_mil,
    predict_bags,
    save_mil,
    stratified_folds,
)
from medseg.mil.select import fit_mil_selected
from tests.mil.test_fit import _toy_bags, _write_csv


@pytest.fixture
def toy(tmp_path, rng):
    rows = np.asarray(_toy_bags(rng, 30), float)
    # features far from standard (scales 0.1..10, offsets up to 100), so each part's standardisation differs
    rows[:, 2:] = rows[:, 2:] * [1.0, 10.0, 0.1, 5.0] + [3.0, -20.0, 0.0, 100.0]
    _write_csv(tmp_path / "toy.csv", rows)
    return load_bags(tmp_path / "toy.csv")


@pytest.mark.parametrize("model", ["gated_attention_mil", "max_mil"])
def test_bagged_predicts_the_mean_of_its_parts(toy, tmp_path, model):
    cfg = MILTrainConfig(model=model, epochs=2, ensemble=2)
    parts = [fit_mil(toy.subset(np.arange(0, 20)), cfg, seed=1), fit_mil(toy.subset(np.arange(10, 30)), cfg, seed=2)]
    assert not np.allclose(parts[0].mean, parts[1].mean)
    ref = empty_ensemble(toy, cfg)
    bag = mil_grid.bagged(parts, ref, cfg)
    assert len(bag.models) == 4
    np.testing.assert_array_equal(bag.mean, ref.mean)
    want = np.mean([predict_bags(p, toy) for p in parts], 0)   # each part with its own standardisation
    np.testing.assert_allclose(predict_bags(bag, toy), want, atol=1e-5)
    # the same networks without the change of standardisation predict something else (the test can fail)
    naive = mil_grid.MILEnsemble([m for p in parts for m in p.models], ref.mean, ref.std, cfg, ref.in_features)
    assert np.abs(predict_bags(naive, toy) - want).max() > 1e-3
    att = np.mean([attention_weights(p, toy.features[3]) for p in parts], 0)
    np.testing.assert_allclose(attention_weights(bag, toy.features[3]), att, atol=1e-5)
    # the parts are left as they were
    np.testing.assert_allclose(np.mean([predict_bags(p, toy) for p in parts], 0), want, atol=0)
    saved = load_mil(save_mil(bag, tmp_path / "bag.safetensors"))
    np.testing.assert_allclose(predict_bags(saved, toy), predict_bags(bag, toy), atol=1e-7)


def test_bagging_trains_inner_parts_of_training_bags_only_and_no_refit(toy, monkeypatch):
    calls: list[list] = []
    real_fit = mil_grid.fit_jobs

    def spy_fit(bags, jobs, **kw):
        calls.append(jobs)
        return real_fit(bags, jobs, **kw)

    monkeypatch.setattr(mil_grid, "fit_jobs", spy_fit)
    cfg = MILTrainConfig(epochs=2, ensemble=1, bagging=True, inner_folds=3)
    s = cross_validate(toy, cfg, folds=3, repeats=1, seed=4)
    (jobs,) = calls                       # the inner networks only: no refit
    assert len(jobs) == 3 * 3
    tests = stratified_folds(toy.labels, 3, np.random.default_rng(4))
    for f, t in enumerate(tests):
        outer = np.setdiff1d(np.arange(len(toy)), t)
        own = [set(j.train.tolist()) for j in jobs[3 * f:3 * f + 3]]
        assert all(o <= set(outer.tolist()) for o in own)              # never a test-fold bag
        left_out = [set(outer.tolist()) - o for o in own]              # each leaves out one inner fold
        assert all(lo for lo in left_out) and not set.intersection(*left_out)
        assert set.union(*left_out) == set(outer.tolist())
    assert [p["epochs"] for p in s["per_fold"]] == [2, 2, 2] and "configs_chosen" not in s
    assert all(0.0 <= p["inner_error"] <= 1.0 for p in s["per_fold"])


def test_bagging_is_deterministic_for_a_seed_and_one_training_set(toy):
    cfg = MILTrainConfig.from_dict({"epochs": 2, "ensemble": 2, "bagging": True, "inner_folds": 3})
    a, info = fit_mil_selected(toy, cfg, seed=5)
    b, _ = fit_mil_selected(toy, cfg, seed=5)
    assert len(a.models) == 6 and info["epochs"] == 2 and "chosen" not in info
    np.testing.assert_array_equal(predict_bags(a, toy), predict_bags(b, toy))
    np.testing.assert_array_equal(a.mean, empty_ensemble(toy, cfg).mean)   # all the training bags'


def test_bagging_with_a_grid_keeps_the_chosen_candidates_networks(toy):
    grid = {"weight_decay": [1e-3, 1e-1], "epochs": [1, 2]}
    cfg = MILTrainConfig(ensemble=1, bagging=True, inner_folds=2, select_grid=grid)
    ((ens, info),) = mil_grid.select_and_fit(toy, [np.arange(30)], [3], cfg, grid)
    assert len(ens.models) == 2 and ens.config.epochs == info["epochs"] == info["chosen"]["epochs"]
    assert ens.config.weight_decay == info["chosen"]["weight_decay"]


@pytest.mark.parametrize("bad", [{"embed_layers": 0}, {"select_epochs": [1, 2]}, {"average_epochs": [1]},
                                 {"inner_folds": 1}, {"batch_bags": 2}])
def test_bagging_config_errors(bad):
    with pytest.raises(ConfigError):
        MILTrainConfig.from_dict({"bagging": True, "epochs": 2, **bad})
    with pytest.raises(ConfigError, match="true or false"):
        MILTrainConfig.from_dict({"bagging": "yes"})


def test_cli_bagging(tmp_path, rng, capsys):
    import json

    from medseg.cli.main import main

    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 30))
    rc = main(["mil", "cv", "--data", str(tmp_path / "toy.csv"), "--folds", "3", "--out", str(tmp_path / "cv"),
               "--bagging", "--inner-folds", "2", "--set", "ensemble=1", "--set", "epochs=2"])
    assert rc == 0
    s = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert s["config"]["bagging"] is True and s["config"]["inner_folds"] == 2
    err = np.mean([p["inner_error"] for p in s["per_fold"]])
    assert f"bagging: 2 x 1 networks per training fold, inner out-of-fold error {err:.3f}" in capsys.readouterr().out


def test_cli_too_few_bags_for_the_inner_folds_names_the_file_and_writes_nothing(tmp_path, rng, capsys, caplog):
    from medseg.cli.main import main

    rows = [r for r in _toy_bags(rng, 12) if r[1] not in (1, 3, 5, 7)]   # 2 positive bags left of 6
    _write_csv(tmp_path / "few.csv", rows)
    rc = main(["mil", "cv", "--data", str(tmp_path / "few.csv"), "--folds", "2", "--out", str(tmp_path / "cv"),
               "--bagging", "--inner-folds", "3", "--set", "epochs=1"])
    err = capsys.readouterr().err + caplog.text
    assert rc != 0 and str(tmp_path / "few.csv") in err and "inner 3-fold split" in err
    assert not (tmp_path / "cv").exists()


def test_a_grid_over_the_network_bags_each_training_sets_choice(toy):
    """embed_layers / attn_dim in the grid: the candidates train as separate stacks; the one-SE rule prefers
    fewer layers, then a narrower attention; each training set keeps the inner networks of its choice."""
    c = MILTrainConfig
    order = sorted([c(embed_layers=2, attn_dim=64), c(embed_layers=1, attn_dim=128), c(embed_layers=1, attn_dim=64)],
                   key=mil_grid.complexity)
    assert [(x.embed_layers, x.attn_dim) for x in order] == [(1, 64), (1, 128), (2, 64)]
    grid = {"embed_layers": [1, 2]}
    cfg = MILTrainConfig(epochs=2, ensemble=1, bagging=True, inner_folds=2, select_grid=grid)
    picked = mil_grid.select_and_fit(toy, [np.arange(20), np.arange(10, 30)], [3, 4], cfg, grid)
    for ens, info in picked:
        layers = info["chosen"]["embed_layers"]
        assert ens.config.embed_layers == layers and len(ens.models) == 2
        assert sum(isinstance(m, torch.nn.Linear) for m in ens.models[0].embed) == layers
    with pytest.raises(ConfigError):
        MILTrainConfig.from_dict({"bagging": True, "select_grid": {"embed_layers": [0, 1]}})
