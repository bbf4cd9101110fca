"""Model selection over a grid inside each training set (medseg.mil.grid)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.mil import grid as mil_grid
from medseg.mil.bags import load_bags
from medseg.mil.crossval import cross_validate
from medseg.mil.fit import MILTrainConfig, stratified_folds
from tests.mil.test_fit import _toy_bags, _write_csv

GRID = {"model": ["attention_mil", "gated_attention_mil"], "weight_decay": [1e-3, 1e-1], "epochs": [1, 3]}


@pytest.fixture
def toy(tmp_path, rng):
    _write_csv(tmp_path / "toy.csv", _toy_bags(rng, 30))
    return load_bags(tmp_path / "toy.csv")


def test_one_se_rule_by_hand():
    # best error 0.10 (se 0.03): within 0.13 are b (0.12) and a; the simplest of them (key) wins
    scores = {"a": (0.10, 0.03), "b": (0.12, 0.02), "c": (0.14, 0.01), "d": (0.13, 0.05)}
    rank = {"a": 3, "b": 1, "c": 0, "d": 2}
    assert mil_grid.pick_one_se(scores, key=rank.get) == "b"
    # d's error 0.13 equals the limit: included, and simpler than b
    rank["d"] = 0.5
    assert mil_grid.pick_one_se(scores, key=rank.get) == "d"
    # two best with equal error: the simpler one defines the limit
    assert mil_grid.pick_one_se({"x": (0.2, 0.0), "y": (0.2, 0.0)}, key={"x": 1, "y": 0}.get) == "y"
    with pytest.raises(ConfigError):
        mil_grid.pick_one_se({}, key=str)


def test_complexity_order_and_grid_points():
    c = MILTrainConfig
    ordered = sorted([c(model="gated_attention_mil", epochs=10), c(embed_dim=64, model="gated_attention_mil",
                                                                    epochs=40),
                      c(model="attention_mil", epochs=40), c(model="attention_mil", epochs=10, weight_decay=1e-2),
                      c(model="attention_mil", epochs=10)], key=mil_grid.complexity)
    assert [(x.embed_dim, x.model[:5], x.epochs, x.weight_decay) for x in ordered] == [
        (64, "gated", 40, 1e-3), (128, "atten", 10, 1e-2), (128, "atten", 10, 1e-3), (128, "atten", 40, 1e-3),
        (128, "gated", 10, 1e-3)]
    pts = mil_grid.grid_points(GRID)
    assert len(pts) == 4 and all("epochs" not in p for p in pts)
    with pytest.raises(ConfigError, match="unknown"):
        MILTrainConfig.from_dict({"select_grid": {"momentum": [0.9]}})
    with pytest.raises(ConfigError, match="exclude"):
        MILTrainConfig.from_dict({"select_grid": "default", "select_epochs": [5]})
    assert MILTrainConfig.from_dict({"select_grid": "default"}).select_grid == mil_grid.DEFAULT_GRID


def test_no_test_fold_bag_reaches_model_selection(toy, monkeypatch):
    """cross_validate hands select_and_fit the outer training sets only, and select_and_fit trains and
    scores on bags of those sets only (every bag index reaching fit_jobs / predict_jobs is recorded)."""
    import medseg.mil.crossval as cv

    calls: list[list[np.ndarray]] = []
    real_select = cv.select_and_fit

    def spy_select(bags, trains, seeds, cfg, grid, **kw):
        calls.append([np.asarray(t) for t in trains])
        return real_select(bags, trains, seeds, cfg, grid, **kw)

    touched: list[set[int]] = []
    real_fit, real_pred = mil_grid.fit_jobs, mil_grid.predict_jobs

    def spy_fit(bags, jobs, **kw):
        touched.append({int(i) for j in jobs for i in j.train})
        return real_fit(bags, jobs, **kw)

    def spy_pred(bags, ens, tests, **kw):
        touched.append({int(i) for t in tests for i in t})
        return real_pred(bags, ens, tests, **kw)

    monkeypatch.setattr(cv, "select_and_fit", spy_select)
    monkeypatch.setattr(mil_grid, "fit_jobs", spy_fit)
    monkeypatch.setattr(mil_grid, "predict_jobs", spy_pred)
    cfg = MILTrainConfig(select_grid=GRID, inner_folds=2)
    s = cross_validate(toy, cfg, folds=3, repeats=2, seed=4)
    (trains,) = calls
    for r in range(2):
        tests = stratified_folds(toy.labels, 3, np.random.default_rng(4 + 7919 * r))
        for f, t in enumerate(tests):
            assert not set(trains[3 * r + f].tolist()) & set(t.tolist())
    # one outer training set on its own: nothing outside it is trained on or predicted
    touched.clear()
    train = trains[0]
    mil_grid.select_and_fit(toy, [train], [7], cfg, GRID)
    assert touched and all(t <= set(train.tolist()) for t in touched)
    assert len(s["per_fold"]) == 6 and sum(s["configs_chosen"].values()) == 6
    for p in s["per_fold"]:
        assert p["chosen"]["model"] in GRID["model"] and p["epochs"] in (1, 3)


def test_choice_is_deterministic_for_a_seed(toy):
    from medseg.mil.fit import predict_bags

    trains = [np.arange(0, 24), np.arange(6, 30)]
    cfg = MILTrainConfig(inner_folds=3)
    a = mil_grid.select_and_fit(toy, trains, [1, 2], cfg, GRID)
    b = mil_grid.select_and_fit(toy, trains, [1, 2], cfg, GRID)
    assert [x[1] for x in a] == [y[1] for y in b]
    for (ea, _), (eb, _) in zip(a, b):
        np.testing.assert_array_equal(predict_bags(ea, toy), predict_bags(eb, toy))
    # the error of the chosen candidate is its pooled inner out-of-fold error over the training bags
    info = a[0][1]
    assert 0.0 <= info["inner_error"] <= 1.0
    n = len(trains[0])
    assert info["inner_se"] == pytest.approx(np.sqrt(info["inner_error"] * (1 - info["inner_error"]) / n), abs=1e-4)


def test_progress_prints_time_left(capsys):
    from medseg.cli.mil import _progress_printer

    show = _progress_printer(every_s=5.0)
    show(1, 4, 10.0)  # 10 s for 1 of 4 -> 30 s left
    show(2, 4, 12.0)  # within 5 s of the last line: quiet
    show(4, 4, 13.0)  # the end is always shown
    err = capsys.readouterr().err.splitlines()
    assert err == ["progress 1/4 (25%), 10 s, about 30 s left", "progress 4/4 (100%), 13 s, about 0 s left"]
