"""BCL: EM pseudo-labelling of patches to fine-tune the patch encoder of a MIL pipeline.

One driver, :func:`run_bcl`, alternates:

* **features + aggregator**: encode every patch with the current encoder, train an attention-MIL
  aggregator on the bags (round 0 = the frozen-encoder baseline);
* **E-step**: patches of negative bags get label 0; in each positive bag the top-k patches by
  attention (times the patch classifier's probability, after the first round) get label 1 and
  the bottom-k label 0; k follows ``k_schedule`` (an int per round, or a fraction of the bag);
* **M-step**: fine-tune encoder + patch classifier on the pseudo-labelled patches (read from the
  source: slides or arrays), class-balanced.

Each round writes ``OUT/round_<r>/`` (encoder, classifier, aggregator, pseudo-labels, metrics);
a finished round is loaded instead of recomputed, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.config import check_keys
from medseg.errors import ConfigError
from medseg.fsutil import atomic_write_text
from medseg.mil.bags import Bags
from medseg.mil.fit import MILTrainConfig, attention_weights, fit_mil, load_mil, predict_bags, save_mil
from medseg.models.encoders import create_encoder, load_weights, save_weights
from medseg.wsi.patches import read_pairs

log = logging.getLogger("medseg.wsi.bcl")

__all__ = ["BCLConfig", "run_bcl", "pseudo_labels", "encode_source"]


@dataclass
class BCLConfig:
    rounds: int = 3
    k_schedule: list[float] = field(default_factory=lambda: [1, 2, 3])
    encoder: str = "tile_resnet18"
    encoder_weights: str | None = None
    encoder_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    finetune_epochs: int = 2
    batch_size: int = 64
    use_classifier_prob: bool = True
    seed: int = 0
    mil: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BCLConfig:
        d = dict(d or {})
        check_keys(d, [f.name for f in fields(cls)], where="bcl")
        cfg = cls(**d)
        if cfg.rounds < 0 or not cfg.k_schedule or any(k <= 0 for k in cfg.k_schedule):
            raise ConfigError("bcl: rounds must be >= 0 and k_schedule a non-empty list of positive numbers")
        MILTrainConfig.from_dict(cfg.mil)  # validate early
        return cfg

    def k_for(self, round_: int, bag_size: int) -> int:
        k = self.k_schedule[min(round_, len(self.k_schedule) - 1)]
        n = int(round(k * bag_size)) if k < 1 else int(k)
        return max(1, min(n, bag_size // 2 if bag_size > 1 else 1))


class PatchClassifier(nn.Module):
    """Encoder + linear head: patch logits ``(B,)``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)


@torch.no_grad()
def encode_source(model: PatchClassifier, source, *, device: torch.device, chunk: int = 256,
                  with_prob: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Features ``(n_b, C)`` per bag (and patch probabilities ``(n_b,)`` when ``with_prob``)."""
    model.eval()
    feats, probs = [], []
    for b in range(len(source)):
        fb, pb = [], []
        n = source.bag_size(b)
        for s in range(0, n, chunk):
            x = source.read(b, np.arange(s, min(n, s + chunk))).to(device)
            f = model.encoder(x)
            fb.append(f.float().cpu().numpy())
            if with_prob:
                pb.append(torch.sigmoid(model.head(f).squeeze(-1)).float().cpu().numpy())
        feats.append(np.concatenate(fb) if fb else np.zeros((0, model.encoder.feature_dim), np.float32))
        probs.append(np.concatenate(pb) if pb else np.zeros(0, np.float32))
    return feats, probs


def pseudo_labels(labels: np.ndarray, scores: list[np.ndarray], k_of: Callable[[int], int]) -> list[np.ndarray]:
    """E-step. ``scores[b]`` ``(n_b,)`` ranks the patches of bag ``b``; returns per-bag int arrays:
    1 (positive), 0 (negative) or -1 (unlabelled). Negative bags: all 0. Positive bags: top-k 1,
    bottom-k 0 with ``k = k_of(n_b)`` (top and bottom never overlap)."""
    out = []
    for y, s in zip(labels, scores):
        lab = np.full(len(s), -1, np.int64)
        if y == 0:
            lab[:] = 0
        elif len(s):
            k = k_of(len(s))
            order = np.argsort(-s, kind="stable")
            lab[order[:k]] = 1
            if len(s) > k:
                lab[order[-min(k, len(s) - k):]] = 0
        out.append(lab)
    return out


def _finetune(model: PatchClassifier, source, plabels: list[np.ndarray], cfg: BCLConfig, *,
              device: torch.device, rng: np.random.Generator) -> float:
    """M-step: class-balanced fine-tuning on the pseudo-labelled patches; returns the last mean loss."""
    pos = [(b, i) for b, lab in enumerate(plabels) for i in np.flatnonzero(lab == 1)]
    neg = [(b, i) for b, lab in enumerate(plabels) for i in np.flatnonzero(lab == 0)]
    if not pos or not neg:
        log.warning("M-step skipped: pseudo-labels hold only one class")
        return float("nan")
    opt = torch.optim.Adam([{"params": model.encoder.parameters(), "lr": cfg.encoder_lr},
                            {"params": model.head.parameters(), "lr": cfg.head_lr}],
                           weight_decay=cfg.weight_decay)
    lossf = nn.BCEWithLogitsLoss()
    n_per_epoch = 2 * max(len(pos), len(neg))
    half = cfg.batch_size // 2
    steps_per_epoch = max(1, n_per_epoch // cfg.batch_size)
    # Every batch's (bag, patch) pairs are drawn up front (the same draws, in the same order, as
    # drawing them step by step); a background thread reads batch s+1, grouped per bag (see
    # read_pairs), while batch s trains.
    pos_a, neg_a = np.asarray(pos, np.int64), np.asarray(neg, np.int64)
    batches = [np.concatenate([pos_a[rng.integers(0, len(pos), half)], neg_a[rng.integers(0, len(neg), half)]])
               for _ in range(cfg.finetune_epochs * steps_per_epoch)]
    y = torch.tensor([1.0] * half + [0.0] * half, device=device)
    last = float("nan")
    model.train()
    with ThreadPoolExecutor(1, thread_name_prefix="medseg-bcl-read") as pool:
        nxt = pool.submit(read_pairs, source, batches[0][:, 0], batches[0][:, 1])
        tot, steps = 0.0, 0
        for s in range(len(batches)):
            x = nxt.result().to(device)
            if s + 1 < len(batches):
                nxt = pool.submit(read_pairs, source, batches[s + 1][:, 0], batches[s + 1][:, 1])
            loss = lossf(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()); steps += 1
            if steps == steps_per_epoch:
                last, tot, steps = tot / steps, 0.0, 0
    model.eval()
    return last


def _pl_accuracy(plabels: list[np.ndarray], inst: list[np.ndarray] | None) -> dict[str, float]:
    if inst is None:
        return {}
    lab = np.concatenate(plabels); true = np.concatenate(inst)
    m = lab >= 0
    pos = lab == 1
    return {"pseudo_label_accuracy": float((lab[m] == true[m]).mean()) if m.any() else float("nan"),
            "pseudo_positive_precision": float(true[pos].mean()) if pos.any() else float("nan"),
            "n_pseudo_labelled": int(m.sum())}


def run_bcl(train, cfg: BCLConfig, out_dir: Path, *, device: torch.device, test=None,
            evaluate: Callable[[Any, np.ndarray], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Run rounds ``0..cfg.rounds`` of BCL on the patch source ``train``; returns per-round metrics.

    Round 0 trains the aggregator on the frozen starting encoder (the baseline) and makes the
    first pseudo-labels; each later round fine-tunes, re-extracts and retrains. ``test`` (a
    patch source) is scored with ``evaluate(test, probs)`` after every round, for reporting.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = PatchClassifier(create_encoder(cfg.encoder, weights=cfg.encoder_weights)).to(device)
    mil_cfg = MILTrainConfig.from_dict(cfg.mil)
    if mil_cfg.select_grid or mil_cfg.select_epochs or mil_cfg.bagging:
        log.warning("BCL trains its aggregator each round with the fixed settings (%d networks, %d epochs): "
                    "select_grid, select_epochs and bagging apply to wsi_mil only", mil_cfg.ensemble, mil_cfg.epochs)
    history: list[dict[str, Any]] = []
    inst = getattr(train, "instance_labels", None)
    for r in range(cfg.rounds + 1):
        rdir = out_dir / f"round_{r}"
        done = rdir / "metrics.json"
        if done.is_file():  # resume: load this round's state
            load_weights(model, rdir / "patch_model.safetensors")
            history.append(json.loads(done.read_text()))
            log.info("round %d: loaded from %s", r, rdir)
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        ft_loss = None  # round 0 fine-tunes nothing (JSON null, not NaN)
        if r > 0:
            prev = np.load(out_dir / f"round_{r - 1}" / "pseudo_labels.npz")
            plabels = [prev[f"b{b}"] for b in range(len(train))]
            ft_loss = _finetune(model, train, plabels, cfg, device=device, rng=rng)
        feats, probs = encode_source(model, train, device=device, with_prob=r > 0)
        ens = fit_mil(Bags(feats, train.labels, list(train.ids)), mil_cfg, seed=cfg.seed + r)
        scores = []
        for b in range(len(train)):
            a = attention_weights(ens, feats[b]) * len(feats[b])  # 1 = uniform
            if r > 0 and cfg.use_classifier_prob:
                a = a * probs[b]
            scores.append(a)
        plabels = pseudo_labels(train.labels, scores, lambda n, r=r: cfg.k_for(r, n))
        np.savez(rdir / "pseudo_labels.npz", **{f"b{b}": lab for b, lab in enumerate(plabels)})
        save_weights(model, rdir / "patch_model.safetensors")
        save_mil(ens, rdir / "aggregator.safetensors")
        m: dict[str, Any] = {"round": r, "finetune_loss": ft_loss, **_pl_accuracy(plabels, inst)}
        if test is not None and evaluate is not None:
            tf, tp = encode_source(model, test, device=device, with_prob=True)
            m.update(evaluate(test, predict_bags(ens, tf)))
            if r > 0:
                m.update({f"maxpatch_{k}": v for k, v in
                          evaluate(test, np.array([p.max() if len(p) else 0.0 for p in tp])).items()})
            tinst = getattr(test, "instance_labels", None)
            if tinst is not None and r > 0:
                from medseg.metrics.classification import roc_auc
                m["test_patch_auc"] = roc_auc(np.concatenate(tinst), np.concatenate(tp))
        m["config"] = asdict(cfg)
        atomic_write_text(done, json.dumps(m, indent=1))
        log.info("round %d: %s", r, {k: v for k, v in m.items() if k != "config"})
        history.append(m)
    return history


def load_round(out_dir: Path, r: int, encoder: str) -> tuple[PatchClassifier, Any]:
    """The patch model and aggregator saved by round ``r``."""
    model = PatchClassifier(create_encoder(encoder))
    load_weights(model, out_dir / f"round_{r}" / "patch_model.safetensors")
    return model.eval(), load_mil(out_dir / f"round_{r}" / "aggregator.safetensors")
