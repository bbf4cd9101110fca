"""The training loop: ``train(cfg)`` writes a model bundle (see :mod:`medseg.bundle`).

One epoch = ``iters_per_epoch`` optimiser steps on batches of patches; validation every
``val_every`` epochs on the held-out fold (whole-volume prediction, Dice per label); last and
best checkpoints after every epoch; ``resume=True`` continues from the last checkpoint and, in
deterministic mode on the CPU, gives bit-identical weights to an uninterrupted run.

>>> summary = train(load_yaml("configs/seg3d/hippocampus_unet.yaml"))   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import config as cfgmod
from medseg.bundle import write_meta
from medseg.device import resolve_device
from medseg.errors import ConfigError, MedsegError
from medseg.training.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint, state_digest
from medseg.training.config import model_kwargs, resolve_config, spatial_dims
from medseg.training.curves import plot_curves, write_csv
from medseg.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from medseg.training.losses import deep_supervision_loss, seg_loss
from medseg.training.prepare import PreparedData, prepare_data
from medseg.training.sampling import EpochSampler, PatchDataset
from medseg.training.setup import build_model, lr_at, make_loader, make_optimizer, setup_torch, wrap_for_training
from medseg.training.validate import validate

log = logging.getLogger("medseg.training")

_PLOT_EVERY_S = 60.0
# keys that may change between an interrupted run and its resumption
_RESUME_FREE = {("training", k) for k in ("epochs", "progress", "num_workers", "threads", "device")}


def config_digest(cfg: dict[str, Any]) -> str:
    """Digest of the settings that determine the training result (keys set to None are left out, so a
    newer medseg that adds a key with a None default still resumes an older run)."""
    free = {f"{a}.{b}" for a, b in _RESUME_FREE}
    flat = _flatten(json.loads(json.dumps(cfg, default=str)))
    items = sorted((k, v) for k, v in flat.items() if k not in free and v is not None)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_changes(old_path: Path, cfg: dict[str, Any]) -> str:
    """'key: old -> new' for the keys that differ from the saved resolved config."""
    try:
        old = _flatten(json.loads(json.dumps(cfgmod.load_yaml(old_path), default=str)))
    except MedsegError:
        return "the saved config.resolved.yaml is unreadable"
    new = _flatten(json.loads(json.dumps(cfg, default=str)))
    free = {f"{a}.{b}" for a, b in _RESUME_FREE}
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in free and old.get(k) != new.get(k)]
    return "; ".join(diffs[:5]) or "no key differs, but the digest does"


def train(cfg_raw: dict[str, Any], *, resume: bool = False) -> dict[str, Any]:
    """Train from a config dict (see :mod:`medseg.training.config`); returns a summary dict."""
    cfg = resolve_config(cfg_raw)
    device = resolve_device(cfg["training"]["device"])
    dinfo = init_distributed(device.type)
    if not dinfo.is_main:
        logging.getLogger("medseg").setLevel(logging.WARNING)     # rank 0 logs for everyone
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(cfg, device=device, dinfo=dinfo, resume=resume)
    finally:
        shutdown(dinfo)
        torch.set_num_threads(saved[0])                     # leave the caller's torch settings as they were
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


@dataclass
class _Run:
    """What the epochs of one training run share, built once by :func:`_setup`."""

    cfg: dict[str, Any]
    out_dir: Path
    device: torch.device
    dinfo: DistInfo
    data: PreparedData
    label_ids: list[int]          # the foreground labels, sorted
    net: torch.nn.Module          # the network trained (a 2D net wrapped in SliceWise)
    core: torch.nn.Module         # what checkpoints and the bundle hold (the 2D net itself)
    t_wrap: dict[str, Any]        # training settings for wrapping the net (channels_last off in 2D)
    deep_sup: bool
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    digest: str                   # config_digest(cfg), checked on --resume
    meta: dict[str, Any]          # bundle.yaml content but the training section

    @property
    def t(self) -> dict[str, Any]:
        return self.cfg["training"]


def _train(cfg: dict[str, Any], *, device: torch.device, dinfo: DistInfo, resume: bool) -> dict[str, Any]:
    out_dir = Path(cfg["output"]["dir"])
    _check_model_name(cfg["model"]["name"])
    kwargs = model_kwargs(cfg)
    has_state = (out_dir / STATE_FILE).is_file()
    if has_state and not resume:
        raise ConfigError(f"output.dir {out_dir} already holds a training run; pass --resume to continue it or "
                          "choose another output.dir")
    run = _setup(cfg, kwargs, out_dir=out_dir, device=device, dinfo=dinfo)
    start_epoch, history, best = _restore(run, resume=resume, has_state=has_state)
    if dinfo.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfgmod.save_yaml(cfg, out_dir / "config.resolved.yaml")
        write_meta(out_dir, {**run.meta, "training": _training_meta(cfg, history, best)})
    train_module, sampler, loader = _make_loader(run)
    t = run.t
    elapsed = float(history[-1]["elapsed_s"]) if history else 0.0
    last_plot = -math.inf
    for epoch in range(start_epoch, t["epochs"]):
        t0 = time.perf_counter()
        train_loss, lr = _train_epoch(run, train_module, sampler, loader, epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, **_validate_epoch(run, epoch)}
        epoch_s = time.perf_counter() - t0
        elapsed += epoch_s
        row.update({"epoch_s": round(epoch_s, 3), "elapsed_s": round(elapsed, 3)})
        history.append(row)
        score = row.get("val_dice_mean")
        is_best = (score is not None and score > best["val_dice_mean"]) or not run.data.val
        if is_best:
            best = {"epoch": epoch + 1, "val_dice_mean": float(score) if score is not None else -1.0}
        if dinfo.is_main:
            _save_epoch(run, epoch, history, best, is_best)
            if epoch + 1 == t["epochs"] or time.perf_counter() - last_plot > _PLOT_EVERY_S:
                plot_curves(history, out_dir / "curves.png")      # ~0.5 s: not after every short epoch
                last_plot = time.perf_counter()
            log.info("%s", _summary_line(row, t["epochs"], run.data.labels, run.label_ids))
        barrier(dinfo)
    return {"bundle": str(out_dir), "epochs": len(history), "best": best,
            "last": history[-1] if history else {}, "rank": dinfo.rank, "world_size": dinfo.world_size,
            "weights_digest": state_digest(run.core.state_dict())}


def _check_model_name(name: str) -> None:
    from medseg.models import SEG_MODELS, seg_model_names

    if name not in seg_model_names():
        SEG_MODELS.get(name)  # raises ConfigError listing the known models


def _setup(cfg: dict[str, Any], kwargs: dict[str, Any], *, out_dir: Path, device: torch.device,
           dinfo: DistInfo) -> _Run:
    """Torch settings, the prepared data, the network (seeded), its optimiser and AMP settings."""
    t = cfg["training"]
    setup_torch(t, device)
    data = prepare_data(cfg)
    patch = data.plan["patch_size"]
    dims = spatial_dims(cfg)
    slice_axis = None
    if dims == 2:   # a 2D net on the 3D patches, slice by slice along the axis the predictor uses too
        from medseg.models.slicewise import slicing_axis

        slice_axis = slicing_axis(data.plan["spacing_mm"])
        t_wrap = {**t, "channels_last": False}     # channels_last_3d does not apply to 2D weights
    else:
        t_wrap = t
    torch.manual_seed(t["seed"])
    arch_kwargs = {"spatial_dims": dims, "in_channels": data.info.channels, "out_channels": data.info.num_classes,
                   **kwargs}
    net, deep_sup = build_model(cfg["model"]["name"], arch_kwargs, patch=patch, device=device,
                                deep_supervision=t["deep_supervision"], slice_axis=slice_axis)
    core = net.model if slice_axis is not None else net    # what the bundle saves: the 2D net itself
    optimizer = make_optimizer(net, t)
    amp_dtype = _amp_dtype(t["amp"], device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return _Run(cfg=cfg, out_dir=out_dir, device=device, dinfo=dinfo, data=data,
                label_ids=[k for k in sorted(data.labels) if k != 0], net=net, core=core, t_wrap=t_wrap,
                deep_sup=deep_sup, optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype,
                digest=config_digest(cfg), meta=_bundle_meta(cfg, data, arch_kwargs, patch, slice_axis))


def _restore(run: _Run, *, resume: bool, has_state: bool) -> tuple[int, list[dict], dict]:
    """``(first epoch, history, best)``: from the last checkpoint on --resume, else a fresh start."""
    if resume and has_state:
        state = load_checkpoint(run.out_dir, model=run.core, architecture=run.cfg["model"]["name"],
                                optimizer=run.optimizer, scaler=run.scaler)
        if state.get("config_digest") != run.digest:
            changed = _config_changes(run.out_dir / "config.resolved.yaml", run.cfg)
            raise ConfigError(f"the config differs from the one {run.out_dir} was trained with ({changed}); only "
                              "training.epochs, progress, num_workers, threads and device may change on --resume "
                              "(or resume with --config " + str(run.out_dir / "config.resolved.yaml") + ")")
        return int(state["epoch"]), list(state["history"]), dict(state["best"])
    if resume:
        log.warning("--resume: no checkpoint in %s, starting a new run", run.out_dir)
    return 0, [], {"epoch": 0, "val_dice_mean": -1.0}


def _make_loader(run: _Run):
    """``(module the batches go through, epoch sampler, loader of training patches)``."""
    t = run.t
    train_module = wrap_for_training(run.net, deep_supervision=run.deep_sup, t=run.t_wrap, device=run.device,
                                     dinfo=run.dinfo)
    dataset = PatchDataset(run.data.train, patch=run.data.plan["patch_size"], augment=run.cfg["augment"],
                           seed=t["seed"], foreground_fraction=t["foreground_fraction"])
    sampler = EpochSampler(iters_per_epoch=t["iters_per_epoch"], batch_size=t["batch_size"], rank=run.dinfo.rank,
                           world_size=run.dinfo.world_size)
    return train_module, sampler, make_loader(dataset, sampler, t, run.device)


def _train_epoch(run: _Run, train_module, sampler: EpochSampler, loader, epoch: int) -> tuple[float, float]:
    """One epoch of optimiser steps; returns the mean training loss over all ranks and the last lr."""
    t, device = run.t, run.device
    total_steps = t["epochs"] * t["iters_per_epoch"]
    warmup = int(round(t["warmup_epochs"] * t["iters_per_epoch"]))
    channels_last = _channels_last(run.t_wrap, device)
    sampler.set_epoch(epoch)
    run.net.train()
    loss_sum, lr = torch.zeros((), dtype=torch.float64, device=device), t["lr"]
    bar = _progress(t, run.dinfo, epoch)
    for it, (x, y) in enumerate(loader):
        lr = lr_at(epoch * t["iters_per_epoch"] + it, total=total_steps, base=t["lr"], warmup=warmup,
                   schedule=t["schedule"], power=t["poly_power"])
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        loss = _step(run, train_module, x, y)
        loss_sum += loss.detach().double()
        if bar is not None:   # the loss detached: a scalar of a tensor that requires grad warns in torch
            bar.set_postfix_str(f"loss {loss.detach().item():.4f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    train_loss = float(all_reduce_sum([float(loss_sum)], run.dinfo, device)[0]) / (
        t["iters_per_epoch"] * run.dinfo.world_size)
    if not math.isfinite(train_loss):
        raise MedsegError(f"training loss became {train_loss} in epoch {epoch + 1}; lower training.lr or set "
                          "training.amp: off", code="diverged")
    return train_loss, lr


def _step(run: _Run, train_module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step on the batch ``(x, y)`` (AMP, loss scaling, gradient clipping); returns the loss."""
    t, optimizer, scaler = run.t, run.optimizer, run.scaler
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        out = train_module(x)
    if run.deep_sup:
        loss = deep_supervision_loss(list(out), y, kind=t["loss"])
    else:
        loss = seg_loss(out, y, kind=t["loss"])
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if t["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), t["grad_clip"])
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss


def _validate_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """The validation columns of this epoch's row: Dice per label and their mean, averaged over the
    validation cases of all ranks (``None`` in the epochs without validation)."""
    t, data, labels, label_ids = run.t, run.data, run.data.labels, run.label_ids
    if not data.val:
        return {}
    row: dict[str, Any] = {"val_dice_mean": None, **{f"val_dice_{labels[k]}": None for k in label_ids}}
    if (epoch + 1) % t["val_every"] == 0 or epoch + 1 == t["epochs"]:
        val_cases = data.val[run.dinfo.rank::run.dinfo.world_size]
        sums, counts = validate(run.net, val_cases, labels=label_ids, divisor=data.plan["divisor"],
                                device=run.device, amp_dtype=run.amp_dtype)
        tot = all_reduce_sum(np.concatenate([sums, counts]), run.dinfo, run.device)
        per = tot[: len(label_ids)] / np.maximum(tot[len(label_ids):], 1)
        row.update({f"val_dice_{labels[k]}": float(v) for k, v in zip(label_ids, per)})
        row["val_dice_mean"] = float(per.mean())
    return row


def _save_epoch(run: _Run, epoch: int, history: list[dict], best: dict, is_best: bool) -> None:
    """Checkpoint (last, and best when ``is_best``), bundle.yaml and curves.csv after an epoch."""
    save_checkpoint(run.out_dir, model_state=run.core.state_dict(), architecture=run.cfg["model"]["name"],
                    optimizer=run.optimizer, scaler=run.scaler, epoch=epoch + 1, history=history, best=best,
                    is_best=is_best, config_digest=run.digest)
    write_meta(run.out_dir, {**run.meta, "training": _training_meta(run.cfg, history, best)})
    write_csv(history, run.out_dir / "curves.csv")


def _amp_dtype(amp: str, device: torch.device):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("training.amp: fp16 needs CUDA; use bf16 or off on the CPU")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _channels_last(t: dict, device: torch.device) -> bool:
    v = t["channels_last"]
    return device.type == "cuda" if v == "auto" else bool(v)


def _progress(t: dict, dinfo: DistInfo, epoch: int):
    if not (t["progress"] and dinfo.is_main):
        return None
    from medseg.progress import progress_bar

    return progress_bar(t["iters_per_epoch"], f"epoch {epoch + 1}/{t['epochs']}", "it", leave=False)


def _summary_line(row: dict, epochs: int, labels: dict[int, str], label_ids: list[int]) -> str:
    s = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}"
    if row.get("val_dice_mean") is not None:
        per = ", ".join(f"{labels[k]} {row[f'val_dice_{labels[k]}']:.3f}" for k in label_ids)
        s += f"  val Dice {row['val_dice_mean']:.4f} ({per})"
    return s + f"  lr {row['lr']:.2e}  {row['epoch_s']:.1f} s"


def _bundle_meta(cfg: dict, data: PreparedData, arch_kwargs: dict, patch, slice_axis: int | None) -> dict[str, Any]:
    """bundle.yaml content. A 2D bundle's ``patch_size`` is the in-plane window (the training patch
    without the slicing axis), which the predictor slides over every slice along the same axis."""
    in_plane = [int(p) for k, p in enumerate(patch) if k != slice_axis]
    extra = {} if slice_axis is None else {"slice_axis": int(slice_axis)}
    return {
        "model": {"name": cfg["model"]["name"], "kwargs": arch_kwargs},
        "labels": {int(k): v for k, v in data.labels.items()},
        "channels": data.info.channels,
        "plan": json.loads(json.dumps(data.plan)),
        "patch_size": in_plane,
        **extra,
        "spacing_mm": list(data.plan["spacing_mm"]),
        **({"input_guard": data.input_guard} if data.input_guard else {}),
        "data": {"root": str(cfg["data"]["root"]), "fold": cfg["data"]["fold"],
                 "num_folds": cfg["data"]["num_folds"], "split_seed": cfg["data"]["seed"],
                 "train_cases": [c.case for c in data.train], "val_cases": [c.case for c in data.val]},
    }


def _training_meta(cfg: dict, history: list[dict], best: dict) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {"epochs_done": len(history), "epochs": cfg["training"]["epochs"], "best_epoch": best["epoch"],
            "best_val_dice_mean": best["val_dice_mean"] if best["val_dice_mean"] >= 0 else None,
            "last": last, "seconds": last.get("elapsed_s", 0.0)}
