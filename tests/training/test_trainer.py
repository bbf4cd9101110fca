"""End-to-end training runs on a tiny synthetic data set with the tiny test model."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from medseg.bundle import load_bundle
from medseg.errors import ConfigError, InputError
from medseg.training import train
from medseg.weights import load_weights
from tests.training.helpers import REPO_ROOT, TINY, make_dataset, tiny_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), n=6)


def test_training_writes_a_loadable_bundle(dataset, tmp_path):
    out = tmp_path / "bundle"
    summary = train(tiny_config(dataset, out))
    names = {p.name for p in out.iterdir()}
    assert {"bundle.yaml", "model.safetensors", "last.safetensors", "train_state.pt", "config.resolved.yaml",
            "curves.csv", "curves.png"} <= names
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_dice_mean", "val_dice_anterior", "val_dice_posterior", "lr", "elapsed_s"} <= set(rows[0])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, meta = load_bundle(out)
    assert meta["labels"] == {0: "background", 1: "anterior", 2: "posterior"}
    assert meta["model"] == {"name": TINY, "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}}
    assert meta["patch_size"] == [16, 16, 16] and meta["plan"]["normalization"] == "zscore"
    assert len(meta["data"]["val_cases"]) == 2 and meta["training"]["epochs_done"] == 2
    assert summary["best"]["epoch"] in (1, 2)
    best, _ = load_weights(out / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])


def test_resume_is_bit_identical(dataset, tmp_path, monkeypatch):
    import medseg.training.trainer as trainer_mod

    full = tmp_path / "full"
    train(tiny_config(dataset, full, epochs=2))
    part = tmp_path / "part"
    # interrupt the same run in the middle of epoch 2 (its 5th training step)
    real_loss, calls = trainer_mod.deep_supervision_loss, []

    def interrupting_loss(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    monkeypatch.setattr(trainer_mod, "deep_supervision_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(dataset, part, epochs=2))
    monkeypatch.setattr(trainer_mod, "deep_supervision_loss", real_loss)
    _, meta = load_bundle(part, weights="last")
    assert meta["training"]["epochs_done"] == 1
    train(tiny_config(dataset, part, epochs=2), resume=True)
    a, _ = load_weights(full / "last.safetensors")
    b, _ = load_weights(part / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = list(csv.DictReader((full / "curves.csv").open()))
    rb = list(csv.DictReader((part / "curves.csv").open()))
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]


def test_two_epochs_differ_from_one(dataset, tmp_path):
    """Guards the resume test: training really changes the weights between epochs."""
    train(tiny_config(dataset, tmp_path / "one", epochs=1))
    train(tiny_config(dataset, tmp_path / "two", epochs=2))
    a, _ = load_weights(tmp_path / "one" / "last.safetensors")
    b, _ = load_weights(tmp_path / "two" / "last.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_workers_do_not_change_the_result(dataset, tmp_path):
    train(tiny_config(dataset, tmp_path / "w0", epochs=2, num_workers=0))
    train(tiny_config(dataset, tmp_path / "w1", epochs=2, num_workers=2))   # persistent workers, 2 epochs
    a, _ = load_weights(tmp_path / "w0" / "last.safetensors")
    b, _ = load_weights(tmp_path / "w1" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_a_run(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "b", epochs=1)
    train(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)
    cfg2 = tiny_config(dataset, tmp_path / "b", epochs=2, lr=0.5)
    with pytest.raises(ConfigError, match="config differs"):
        train(cfg2, resume=True)


def test_unknown_model_fails_before_training(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "b")
    cfg["model"] = {"name": "no_such_net"}
    with pytest.raises(ConfigError, match="no_such_net"):
        train(cfg)
    assert not (tmp_path / "b").exists()


def test_bad_model_kwarg_and_patch(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "b")
    cfg["model"]["depth"] = 3
    with pytest.raises(ConfigError, match="model.*depth"):
        train(cfg)
    cfg = tiny_config(dataset, tmp_path / "c")
    cfg["plan"]["patch_size"] = [15, 16, 16]       # odd size: the tiny net's up-sampling cannot match it
    with pytest.raises(ConfigError, match="patch"):
        train(cfg)


def test_bad_case_fails_before_training(tmp_path):
    root = make_dataset(tmp_path / "d", n=4)
    (root / "labelsTr" / "case_003.nii.gz").unlink()
    with pytest.raises(InputError, match="case_003"):
        train(tiny_config(root, tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_cli_train_and_set(dataset, tmp_path):
    from medseg import config as cfgmod

    cfg_path = tmp_path / "cfg.yaml"
    cfgmod.save_yaml(tiny_config(dataset, tmp_path / "out", epochs=5), cfg_path)
    r = subprocess.run([sys.executable, "-c", "import tests.training.helpers, sys; from medseg.cli.main import main; "
                        "sys.exit(main(sys.argv[1:]))", "train", "--config", str(cfg_path),
                        "--set", "training.epochs=1", "--set", "data.fold=1"],
                       capture_output=True, text=True, cwd=REPO_ROOT,
                       env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"epochs": 1' in r.stdout and "epoch 1/1" in r.stderr
    _, meta = load_bundle(tmp_path / "out")
    assert meta["data"]["fold"] == 1
    r = subprocess.run([sys.executable, "-m", "medseg", "train", "--config", str(cfg_path), "--set",
                        "training.bogus=1"], capture_output=True, text=True, cwd=REPO_ROOT,
                       env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "bogus" in r.stderr      # a config error


def test_real_hippocampus_subset(tmp_path):
    from tests.paths import shared_path

    root = shared_path("hippocampus")
    cfg = tiny_config(root, tmp_path / "b", epochs=1, iters_per_epoch=2)
    cfg["data"].update({"max_cases": 6, "num_folds": 3})
    cfg["plan"] = {"divisor": 2}                    # auto patch from the median shape
    summary = train(cfg)
    _, meta = load_bundle(tmp_path / "b")
    assert meta["plan"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert all(30 <= s <= 60 for s in meta["patch_size"]) and all(s % 2 == 0 for s in meta["patch_size"])
    assert meta["labels"] == {0: "background", 1: "label_1", 2: "label_2"}
    assert 0.0 <= summary["last"]["val_dice_mean"] <= 1.0
    assert np.isfinite(summary["last"]["train_loss"])


def test_training_learns_the_synthetic_blobs(dataset, tmp_path):
    """60 steps separate two blobs (intensity +6 and +12 noise SDs) from the background on held-out cases."""
    summary = train(tiny_config(dataset, tmp_path / "b", epochs=3, iters_per_epoch=20, lr=2e-2))
    rows = list(csv.DictReader((tmp_path / "b" / "curves.csv").open()))
    assert float(rows[-1]["train_loss"]) < 0.6 * float(rows[0]["train_loss"])
    assert summary["last"]["val_dice_anterior"] > 0.8 and summary["last"]["val_dice_posterior"] > 0.8


def test_bf16_autocast_and_channels_last_paths(dataset, tmp_path):
    """The CUDA-oriented options also run on the CPU (bf16 autocast, channels_last_3d, SGD, cosine)."""
    summary = train(tiny_config(dataset, tmp_path / "b", epochs=1, amp="bf16", channels_last=True,
                                optimizer="sgd", schedule="cosine", warmup_epochs=0.5, lr=1e-2))
    assert np.isfinite(summary["last"]["train_loss"]) and 0 <= summary["last"]["val_dice_mean"] <= 1
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(tiny_config(dataset, tmp_path / "c", epochs=1, amp="fp16"))


def test_training_with_progress_raises_no_torch_warning_and_logs_the_loss(dataset, tmp_path, caplog):
    """The bar's loss is read detached (torch warns about a scalar of a tensor that requires grad) and
    updated every iteration; outside a terminal the bar is a plain log line (no carriage return)."""
    import logging
    import warnings

    from medseg import progress

    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="medseg.progress"):
        warnings.simplefilter("error", UserWarning)
        orig = progress.PlainProgress.__init__

        def every_update(self, *a, **kw):     # a line at every update instead of every 30 s
            orig(self, *a, **{**kw, "interval_s": 0.0})

        progress.PlainProgress.__init__ = every_update   # type: ignore[method-assign]
        try:
            train(tiny_config(dataset, tmp_path / "b", progress=True, epochs=1))
        finally:
            progress.PlainProgress.__init__ = orig     # type: ignore[method-assign]
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.progress"]
    assert [ln.split(":")[1].split(",")[0].strip().split(" ")[0] for ln in lines[:3]] == ["1/3", "2/3", "3/3"]
    assert all("[loss " in ln and "\r" not in ln for ln in lines)
