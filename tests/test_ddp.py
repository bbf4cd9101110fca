"""DDP: ``torchrun --nproc_per_node 2`` trains on the CPU with gloo; ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from medseg import config as cfgmod
from medseg.bundle import load_bundle, load_weights
from medseg.training.checkpoint import state_digest

from test_training_helpers import REPO_ROOT, make_dataset, tiny_config

ENTRY = """
import json, os, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import test_training_helpers            # registers the tiny test model in every rank
from medseg import config as cfgmod
from medseg.training import train
summary = train(cfgmod.load_yaml(sys.argv[1]))
with open(os.path.join(sys.argv[2], f"rank{{summary['rank']}}.json"), "w") as fh:
    json.dump(summary, fh)
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_gloo(tmp_path):
    root = make_dataset(tmp_path / "ds", n=6)
    cfg = tiny_config(root, tmp_path / "bundle", epochs=2, iters_per_epoch=2, threads=1)
    cfg_path = cfgmod.save_yaml(cfg, tmp_path / "cfg.yaml")
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests")))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(entry), str(cfg_path), str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    s0 = json.loads((tmp_path / "rank0.json").read_text())
    s1 = json.loads((tmp_path / "rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2
    # gradients were averaged: both ranks hold bit-identical weights, and rank 0 saved them
    assert s0["weights_digest"] == s1["weights_digest"]
    last, _ = load_weights(tmp_path / "bundle" / "last.safetensors")
    assert state_digest(last) == s0["weights_digest"]
    # both ranks agree on the validation score (all-reduced over their shards of the validation cases)
    assert s0["last"]["val_dice_mean"] == s1["last"]["val_dice_mean"]
    _, meta = load_bundle(tmp_path / "bundle")
    assert meta["training"]["epochs_done"] == 2
    assert (tmp_path / "bundle" / "curves.csv").read_text().count("\n") == 3   # header + 2 epochs, rank 0 only
