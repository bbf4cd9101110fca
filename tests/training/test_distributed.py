"""DDP through the real command line: ``torchrun --nproc_per_node 2 -m medseg train --config CFG --set ...``
on the CPU with gloo.

The command is run unchanged; a ``sitecustomize`` module on PYTHONPATH (test instrumentation, loaded
by every Python process) records in each rank (1) every file opened for writing or renamed
(``sys.addaudithook``: ``open`` and ``os.rename`` events) and (2) the summary ``train()`` returned,
with the SHA-256 of that rank's final weights. The tests then check that only rank 0 wrote the
bundle, that both ranks ended with bit-identical weights equal to the saved ones, and that a run
stopped after one epoch and resumed with ``--resume`` ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg import config as cfgmod
from medseg.bundle import load_bundle
from medseg.training.checkpoint import state_digest
from medseg.weights import load_weights
from tests.training.helpers import REPO_ROOT, make_dataset

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    # 3 torchrun launches of 2 processes (each imports torch + medseg: ~5 s per launch on 2 cores)
    pytest.mark.slow,
]

TORCHRUN = Path(sys.executable).with_name("torchrun")

HOOK = '''
import json, os, sys
_dir = os.environ.get("MEDSEG_TEST_AUDIT_DIR")
_rank = os.environ.get("RANK")
if _dir and _rank is not None:          # torchrun workers only, not the launcher
    _watch = os.path.realpath(os.environ["MEDSEG_TEST_AUDIT_WATCH"])
    _writes = []

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event == "os.rename":
            paths = [args[1]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)) and not isinstance(p, int):
                p = os.path.realpath(os.fsdecode(p))
                if p.startswith(_watch + os.sep):
                    _writes.append(os.path.relpath(p, _watch))

    sys.addaudithook(_hook)
    import medseg.training as _mt
    _train = _mt.train

    def _recording_train(*a, **kw):
        summary = _train(*a, **kw)
        with open(os.path.join(_dir, f"rank{_rank}.json"), "w") as fh:
            json.dump({"summary": summary, "writes": sorted(set(_writes))}, fh, default=str)
        return summary

    _mt.train = _recording_train
'''


def _config(root: Path, out: Path) -> dict:
    # constant learning rate: a 1-epoch run resumed to 2 epochs then follows exactly the schedule of
    # an uninterrupted 2-epoch run (poly/cosine depend on training.epochs, which --resume may change)
    return {"data": {"root": str(root), "num_folds": 3, "fold": 0},
            "model": {"name": "unet", "features": [4, 8], "deep_supervision": True},
            "plan": {"patch_size": [16, 16, 16], "divisor": 2},
            "augment": {"p_spatial": 0.5},
            "training": {"epochs": 2, "iters_per_epoch": 2, "batch_size": 2, "lr": 3e-3, "schedule": "constant",
                         "seed": 3, "threads": 1, "progress": False},
            "output": {"dir": str(out)}}


def _torchrun(tmp: Path, cfg_path: Path, bundle: Path, audit: Path, *extra: str) -> dict[int, dict]:
    hook_dir = tmp / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    if audit.exists():
        shutil.rmtree(audit)
    audit.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update({"PYTHONPATH": f"{hook_dir}{os.pathsep}{REPO_ROOT}", "OMP_NUM_THREADS": "1",
                "MEDSEG_TEST_AUDIT_DIR": str(audit), "MEDSEG_TEST_AUDIT_WATCH": str(bundle)})
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "medseg", "train",
           "--config", str(cfg_path), "--set", f"output.dir={bundle}", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = {int(p.stem[4:]): json.loads(p.read_text()) for p in audit.glob("rank*.json")}
    assert sorted(out) == [0, 1], r.stderr[-2000:]
    assert r.stdout.count('"bundle"') == 1          # the CLI prints its summary on rank 0 only
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not TORCHRUN.is_file():
        pytest.skip(f"no torchrun next to {sys.executable}")
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_dataset(tmp / "ds", n=6)
    cfg_path = cfgmod.save_yaml(_config(root, tmp / "unused"), tmp / "cfg.yaml")
    full = tmp / "full"
    ranks = _torchrun(tmp, cfg_path, full, tmp / "audit_full")
    return tmp, cfg_path, full, ranks


def test_torchrun_cli_rank0_writes_and_identical_weights(setup):
    _, _, full, ranks = setup
    s0, s1 = ranks[0]["summary"], ranks[1]["summary"]
    assert s0["world_size"] == s1["world_size"] == 2 and (s0["rank"], s1["rank"]) == (0, 1)
    # gradients were averaged: both ranks hold bit-identical weights, and rank 0 saved them
    assert s0["weights_digest"] == s1["weights_digest"]
    last, _ = load_weights(full / "last.safetensors")
    assert state_digest(last) == s0["weights_digest"]
    # both ranks agree on the validation score (all-reduced over their shards of the validation cases)
    assert s0["last"]["val_dice_mean"] == s1["last"]["val_dice_mean"]
    # only rank 0 wrote into the bundle folder: weights, state, bundle.yaml, config, curves
    assert ranks[1]["writes"] == []
    written = set(ranks[0]["writes"])
    for name in ("last.safetensors", "model.safetensors", "train_state.pt", "bundle.yaml", "config.resolved.yaml",
                 "curves.csv", "curves.png"):
        assert name in written, (name, sorted(written))
    assert not list(full.glob(".*.tmp*"))                 # no temporary file left behind
    _, meta = load_bundle(full)
    assert meta["training"]["epochs_done"] == 2
    assert (full / "curves.csv").read_text().count("\n") == 3   # header + 2 epochs


def test_torchrun_resume_gives_the_uninterrupted_weights(setup):
    """1 epoch, then ``--resume --set training.epochs=2`` == 2 epochs in one go, bit for bit (CPU,
    deterministic mode, constant lr): the checkpoint restores weights, AdamW moments and the torch
    RNG; the epoch's sample order and augmentation are seeded from (seed, epoch), and gloo's
    all-reduce sums the two ranks' gradients in a fixed order."""
    tmp, cfg_path, full, ranks_full = setup
    part = tmp / "part"
    first = _torchrun(tmp, cfg_path, part, tmp / "audit_p1", "--set", "training.epochs=1")
    assert first[0]["summary"]["epochs"] == 1
    assert first[0]["summary"]["weights_digest"] != ranks_full[0]["summary"]["weights_digest"]
    resumed = _torchrun(tmp, cfg_path, part, tmp / "audit_p2", "--set", "training.epochs=2", "--resume")
    assert resumed[1]["writes"] == []
    assert resumed[0]["summary"]["weights_digest"] == resumed[1]["summary"]["weights_digest"]
    assert resumed[0]["summary"]["weights_digest"] == ranks_full[0]["summary"]["weights_digest"]
    a, _ = load_weights(full / "last.safetensors")
    b, _ = load_weights(part / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run's history continues the first one: same per-epoch losses as the uninterrupted run
    assert (part / "curves.csv").read_text().splitlines()[1].split(",")[:2] == \
        (full / "curves.csv").read_text().splitlines()[1].split(",")[:2]
    assert [r.split(",")[1] for r in (part / "curves.csv").read_text().splitlines()[1:]] == \
        [r.split(",")[1] for r in (full / "curves.csv").read_text().splitlines()[1:]]
