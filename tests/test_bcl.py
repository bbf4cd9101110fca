"""BCL: E-step by hand, k schedule, and a tiny end-to-end run with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.training.bcl import BCLConfig, pseudo_labels, run_bcl
from medseg.wsi.metrics import binary_metrics
from medseg.wsi.patches import ArrayPatchSource


def test_pseudo_labels_by_hand():
    labels = np.array([0, 1, 1])
    scores = [np.array([0.9, 0.1]), np.array([0.2, 0.9, 0.5, 0.1, 0.3]), np.array([0.4])]
    out = pseudo_labels(labels, scores, lambda n: 2 if n > 1 else 1)
    assert out[0].tolist() == [0, 0]
    assert out[1].tolist() == [0, 1, 1, 0, -1]  # top-2: 0.9, 0.5; bottom-2: 0.1, 0.2
    assert out[2].tolist() == [1]              # a single patch is the positive


def test_k_schedule_and_config_validation():
    cfg = BCLConfig.from_dict({"k_schedule": [1, 3, 0.25]})
    assert [cfg.k_for(r, 20) for r in range(4)] == [1, 3, 5, 5]
    assert cfg.k_for(1, 4) == 2  # never more than half the bag
    with pytest.raises(ConfigError):
        BCLConfig.from_dict({"k_schedul": [1]})
    with pytest.raises(ConfigError):
        BCLConfig.from_dict({"mil": {"epochz": 3}})


def _toy_source(rng, n_bags):
    """4x4 patches: positives are bright, negatives dark; a positive bag holds one bright patch."""
    bags, labels, inst = [], [], []
    for b in range(n_bags):
        n = 5
        y = b % 2
        x = rng.normal(-0.5, 0.3, (n, 3, 4, 4)).astype(np.float32)
        li = np.zeros(n, np.int64)
        if y:
            j = int(rng.integers(n))
            x[j] += 1.5
            li[j] = 1
        bags.append(x); labels.append(y); inst.append(li)
    return ArrayPatchSource(bags, labels, instance_labels=inst)


def test_run_bcl_tiny_writes_rounds_and_resumes(tmp_path, rng):
    torch.set_num_threads(1)
    train, test = _toy_source(rng, 16), _toy_source(rng, 10)
    cfg = BCLConfig.from_dict({"rounds": 1, "k_schedule": [1], "encoder": "tile_resnet_tiny", "finetune_epochs": 1,
                               "batch_size": 8, "encoder_lr": 1e-3, "mil": {"epochs": 5, "ensemble": 1}})
    ev = lambda src, p: binary_metrics(src.labels, p)  # noqa: E731
    hist = run_bcl(train, cfg, tmp_path, device=torch.device("cpu"), test=test, evaluate=ev)
    assert [h["round"] for h in hist] == [0, 1]
    for r in (0, 1):
        d = tmp_path / f"round_{r}"
        for f in ("metrics.json", "pseudo_labels.npz", "patch_model.safetensors", "aggregator.safetensors"):
            assert (d / f).is_file()
    pl = np.load(tmp_path / "round_0" / "pseudo_labels.npz")
    for b in range(len(train)):
        lab = pl[f"b{b}"]
        if train.labels[b] == 0:
            assert (lab == 0).all()
        else:
            assert (lab == 1).sum() == 1 and (lab == 0).sum() == 1
    # pseudo-label accuracy is computed against the true instance labels
    lab = np.concatenate([pl[f"b{b}"] for b in range(len(train))])
    true = np.concatenate(train.instance_labels)
    assert hist[0]["pseudo_label_accuracy"] == pytest.approx((lab[lab >= 0] == true[lab >= 0]).mean())
    # resume: nothing recomputed, same metrics
    mtime = (tmp_path / "round_1" / "patch_model.safetensors").stat().st_mtime_ns
    again = run_bcl(train, cfg, tmp_path, device=torch.device("cpu"), test=test, evaluate=ev)
    assert json.dumps(again, sort_keys=True) == json.dumps(hist, sort_keys=True)
    assert (tmp_path / "round_1" / "patch_model.safetensors").stat().st_mtime_ns == mtime
