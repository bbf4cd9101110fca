"""BCL: E-step by hand, k schedule, and a tiny end-to-end run with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.errors import ConfigError
from medseg.metrics.classification import binary_metrics
from medseg.wsi.bcl import BCLConfig, pseudo_labels, run_bcl
from medseg.wsi.patches import ArrayPatchSource, read_pairs


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
    assert hist[0]["finetune_loss"] is None and hist[1]["finetune_loss"] > 0  # round 0 fine-tunes nothing
    assert "NaN" not in (tmp_path / "round_0" / "metrics.json").read_text()  # strict JSON
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


class _Counting(ArrayPatchSource):
    """Records every read call's (bag, indices)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def read(self, bag, idx):
        self.calls.append((bag, np.asarray(idx).tolist()))
        return super().read(bag, idx)


def test_read_pairs_groups_per_bag(rng):
    src = _Counting([rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(5, 3, 2, 2))], [0, 1])
    x = read_pairs(src, np.array([1, 0, 1, 1]), np.array([3, 2, 3, 0]))
    assert src.calls == [(0, [2]), (1, [0, 3])]  # one call per bag, each index once, sorted
    ref = torch.stack([src.images[1][3], src.images[0][2], src.images[1][3], src.images[1][0]])
    assert torch.equal(x, ref)


def _finetune_one_by_one(model, source, plabels, cfg, rng):
    """The M-step as first written: each patch read on its own; the reference for bitwise equality."""
    pos = [(b, i) for b, lab in enumerate(plabels) for i in np.flatnonzero(lab == 1)]
    neg = [(b, i) for b, lab in enumerate(plabels) for i in np.flatnonzero(lab == 0)]
    opt = torch.optim.Adam([{"params": model.encoder.parameters(), "lr": cfg.encoder_lr},
                            {"params": model.head.parameters(), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    half = cfg.batch_size // 2
    model.train()
    for _ in range(cfg.finetune_epochs):
        for _ in range(max(1, 2 * max(len(pos), len(neg)) // cfg.batch_size)):
            items = ([pos[i] for i in rng.integers(0, len(pos), half)]
                     + [neg[i] for i in rng.integers(0, len(neg), half)])
            y = torch.tensor([1.0] * half + [0.0] * half)
            x = torch.cat([source.read(b, np.array([i])) for b, i in items])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def test_mstep_batched_reads_same_weights(rng):
    from medseg.models.encoders import create_encoder
    from medseg.wsi.bcl import PatchClassifier, _finetune

    torch.set_num_threads(1)
    src = _Counting(_toy_source(rng, 8).images, [b % 2 for b in range(8)])
    plabels = [np.array([0, 0, 0, 0, 0]) if b % 2 == 0 else np.array([1, -1, -1, -1, 0]) for b in range(8)]
    cfg = BCLConfig.from_dict({"encoder": "tile_resnet_tiny", "finetune_epochs": 2, "batch_size": 8})
    torch.manual_seed(3)
    a = PatchClassifier(create_encoder("tile_resnet_tiny"))
    b = PatchClassifier(create_encoder("tile_resnet_tiny"))
    b.load_state_dict(a.state_dict())
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    torch.manual_seed(4)
    _finetune(a, src, plabels, cfg, device=torch.device("cpu"), rng=r1)
    n_batched = len(src.calls)
    src.calls.clear()
    torch.manual_seed(4)
    _finetune_one_by_one(b, src, plabels, cfg, r2)
    # 4 positive and 24 negative patches: 2 epochs x (48 // 8) steps x 8 patches, one read each
    assert len(src.calls) == 2 * 6 * 8
    assert n_batched < 2 * 6 * 8  # grouped: one read per distinct bag of a batch
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert r1.integers(1 << 30) == r2.integers(1 << 30)  # same number of draws


def test_slide_source_threads_read_same_tiles(tmp_path, rng):
    from types import SimpleNamespace

    from PIL import Image

    from medseg.wsi.patches import SlidePatchSource

    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "s.png")
    grid = SimpleNamespace(coords=np.array([[0, 0], [32, 16], [64, 32], [16, 48]]), tile_size=16, mpp=1.0)
    kw = dict(ids=["s"], slide_mpp=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    one = SlidePatchSource([str(tmp_path / "s.png")], [grid], [1], threads=1, **kw)
    many = SlidePatchSource([str(tmp_path / "s.png")], [grid], [1], threads=3, **kw)
    x1, x3 = one.read(0, np.array([3, 0, 2, 1])), many.read(0, np.array([3, 0, 2, 1]))
    assert torch.equal(x1, x3)
    # tile 1 (x=32, y=16) by hand: pixels / 255, channels first
    ref = torch.from_numpy(img[16:32, 32:48].astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(x3[3], ref)
    one.close(); many.close()


def test_bcl_says_that_mil_selection_and_bagging_do_not_apply_to_its_rounds(tmp_path, rng, caplog, monkeypatch):
    import logging

    import medseg.wsi.bcl as bcl

    def stop(*a, **k):
        raise RuntimeError("stop after the checks")

    monkeypatch.setattr(bcl, "encode_source", stop)
    cfg = BCLConfig.from_dict({"rounds": 1, "k_schedule": [1], "encoder": "tile_resnet_tiny",
                               "mil": {"epochs": 2, "ensemble": 1, "bagging": True}})
    with caplog.at_level(logging.WARNING, logger="medseg.wsi.bcl"), pytest.raises(RuntimeError, match="stop"):
        run_bcl(_toy_source(rng, 8), cfg, tmp_path, device=torch.device("cpu"))
    assert "bagging apply to wsi_mil only" in caplog.text
