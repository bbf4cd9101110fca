"""Experiment planning: from a data-set fingerprint to network configurations (``medseg plan``).

Every rule is a small function on numbers, written down with its reason in ``docs/planning.md``:

* :func:`target_spacing` (in :mod:`medseg.preprocess.plan`): median spacing; the out-of-plane axis
  of strongly anisotropic data from its 10th percentile;
* :func:`normalization_for` (in :mod:`medseg.preprocess.plan`, shared with ``medseg fingerprint``):
  per channel from the modality (CT: data-set clip + z-score; others:
  per-case z-score, inside the non-zero mask when cropping to it removes much background);
* :func:`topology`: poolings per axis (stop at a 4-voxel bottleneck, do not pool a coarse axis
  until the others have caught up with its spacing), 3-kernels or in-plane (1 x 3 x 3) kernels;
* :func:`estimate`: activation memory and compute of one training iteration, monotone in patch
  and batch;
* :func:`plan_configuration`: the largest patch (from the median case shape, shrunk on the axis
  that is largest relative to that shape) that fits the budget, then the batch size;
* :func:`plan_experiment`: ``3d_fullres`` always, ``2d`` always, ``3d_lowres`` when the full-
  resolution patch covers less than a quarter of the median case.

>>> topology([1.0, 1.0, 1.0], [40, 56, 40])[0]
[[2, 2, 2], [2, 2, 2], [2, 2, 2]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.preprocess.plan import normalization_for, target_spacing

PLAN_FORMAT = "medseg-plan/1"

#: no axis of the bottleneck is smaller than this (voxels)
MIN_BOTTLENECK = 4
#: pooling stops after this many downsamplings (3D) / (2D)
MAX_POOLINGS = {3: 5, 2: 6}
#: an axis whose spacing is more than this factor coarser than the finest is not pooled / gets kernel 1
ANISO_KERNEL_FACTOR = 2.0
#: 3d_lowres is offered when the full-resolution patch covers less than this fraction of the median case
LOWRES_COVERAGE = 0.25
#: spacing of 3d_lowres grows by this factor per step (as nnU-Net) until the case is about 2 patches
LOWRES_STEP = 1.03
#: largest 2D batch on any device (one slice is cheap: a 2D batch may grow beyond the CPU's 3D batch of 2)
MAX_BATCH_2D = 64
#: a batch covers at most this fraction of all voxels of the data set (avoids over-fitting small sets)
MAX_BATCH_FRACTION = 0.05

#: budgets per device. CPU: a training iteration that stays affordable on a 2-core machine (about 3 s
#: measured there for 120 GFLOP in fp32) and a memory cap; CUDA: the GPU memory.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"memory_gb": 4.0, "gflop_per_iteration": 120.0, "base_features": 16, "max_features": 128,
            "max_features_2d": 256, "min_batch": 2, "max_batch": 2, "epochs": 100, "iters_per_epoch": 50, "amp": "off"},
    "cuda": {"memory_gb": 8.0, "gflop_per_iteration": None, "base_features": 32, "max_features": 320,
             "max_features_2d": 512, "min_batch": 2, "max_batch": 64, "epochs": 1000, "iters_per_epoch": 250,
             "amp": "bf16"},
}


def topology(spacing: Sequence[float], patch: Sequence[int], *, max_poolings: int | None = None
             ) -> tuple[list[list[int]], list[list[int]]]:
    """Strides (one per downsampling, per axis) and kernels (one per level, per axis) for ``patch``.

    An axis is pooled while the next level keeps at least :data:`MIN_BOTTLENECK` voxels on it and
    its spacing at that level is at most :data:`ANISO_KERNEL_FACTOR` times the finest axis' (a
    thick-slice axis waits until in-plane pooling has coarsened the others). A level's kernel is 1
    on an axis still that much coarser than the finest, otherwise 3. At most ``max_poolings``
    downsamplings (default :data:`MAX_POOLINGS`); pooling stops when no axis can be pooled.
    """
    dims = len(patch)
    max_p = MAX_POOLINGS[dims] if max_poolings is None else int(max_poolings)
    sp = np.asarray(spacing, dtype=np.float64)
    size = np.asarray(patch, dtype=np.float64)
    strides: list[list[int]] = []
    kernels: list[list[int]] = []
    for _ in range(max_p + 1):
        kernels.append([1 if s > ANISO_KERNEL_FACTOR * sp.min() else 3 for s in sp])
        if len(strides) == max_p:
            break
        st = [2 if (size[a] / 2 >= MIN_BOTTLENECK and sp[a] <= ANISO_KERNEL_FACTOR * sp.min()) else 1
              for a in range(dims)]
        if not any(s == 2 for s in st):
            break
        strides.append(st)
        size = size / np.asarray(st)
        sp = sp * np.asarray(st)
    return strides, kernels


def divisor_of(strides: Sequence[Sequence[int]], dims: int) -> list[int]:
    """Total downsampling per axis: the patch must be a multiple of it."""
    out = [1] * dims
    for st in strides:
        out = [o * s for o, s in zip(out, st)]
    return out


def features_per_level(levels: int, base: int, cap: int) -> list[int]:
    """``base * 2**k`` per level, capped at ``cap``."""
    return [int(min(base * 2 ** k, cap)) for k in range(levels)]


def estimate(patch: Sequence[int], batch: int, features: Sequence[int], strides: Sequence[Sequence[int]],
             kernels: Sequence[Sequence[int]], *, in_channels: int = 1, out_channels: int = 2) -> dict[str, float]:
    """Memory (GB) and compute (GFLOP) of one training iteration of :class:`medseg.models.unet.UNet`.

    Compute: forward multiply-adds of every convolution (2 FLOP each) times 3 for forward +
    backward, times ``batch``. Memory: float32 activations kept for backward (conv, norm and
    activation outputs: 3 tensors per conv, two convs per unit, encoder and decoder, plus the
    upsampled and concatenated maps), times ``batch``, plus weights, gradients and two AdamW moments.
    Both grow strictly with every patch axis and with ``batch``.
    """
    vox = float(np.prod(patch))
    factors = [1.0]
    for st in strides:
        factors.append(factors[-1] * float(np.prod(st)))
    flop = act = params = 0.0
    cin = in_channels
    for lvl, (f, fac) in enumerate(zip(features, factors)):
        k = float(np.prod(kernels[lvl]))
        v = vox / fac
        enc = k * (cin * f + f * f)
        flop += 2 * enc * v
        params += enc
        act += 6 * f * v
        if lvl < len(features) - 1:
            dec = k * (2 * f * f + f * f) + features[lvl + 1] * f * float(np.prod(strides[lvl]))
            flop += 2 * dec * v
            params += dec
            act += (6 + 3) * f * v          # decoder unit + upsampled map and the concatenation
        cin = f
    flop += 2 * features[0] * out_channels * vox
    return {"gflop_per_iteration": 3 * flop * batch / 1e9,
            "memory_gb": (4 * act * batch + 16 * params) / 2 ** 30}


def _round_to(patch: Sequence[float], div: Sequence[int]) -> list[int]:
    return [int(max(d, math.ceil(p / d) * d)) for p, d in zip(patch, div)]


def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], *, device: str = "cpu",
                       memory_gb: float | None = None, gflop_per_iteration: float | None = None,
                       in_channels: int = 1, out_channels: int = 2, dataset_voxels: float | None = None
                       ) -> dict[str, Any]:
    """Patch, topology, features and batch of one configuration (2D when ``len(spacing) == 2``).

    Starts from the median case shape (rounded up to the pooling divisor) and, while the estimate
    of one iteration at the minimum batch exceeds the budget, shrinks by one divisor step the axis
    whose patch is largest relative to the median shape (ties: the larger axis). Then the batch
    grows while it fits, up to the device's maximum and :data:`MAX_BATCH_FRACTION` of the data set.
    """
    if device not in DEVICE_DEFAULTS:
        raise ConfigError(f"device must be one of {sorted(DEVICE_DEFAULTS)}, got {device!r}")
    d = DEVICE_DEFAULTS[device]
    mem = float(memory_gb if memory_gb is not None else d["memory_gb"])
    gf = gflop_per_iteration if gflop_per_iteration is not None else d["gflop_per_iteration"]
    dims = len(spacing)
    base = d["base_features"]
    cap = d["max_features_2d"] if dims == 2 else d["max_features"]
    med = np.maximum(np.asarray(median_shape, dtype=np.float64), 1.0)
    patch = [float(m) for m in med]

    def describe(p: Sequence[float], batch: int):
        strides, kernels = topology(spacing, [int(round(x)) for x in p])
        div = divisor_of(strides, dims)
        pr = _round_to(p, div)
        strides, kernels = topology(spacing, pr)
        div = divisor_of(strides, dims)
        feats = features_per_level(len(strides) + 1, base, cap)
        est = estimate(pr, batch, feats, strides, kernels, in_channels=in_channels, out_channels=out_channels)
        return pr, strides, kernels, div, feats, est

    def fits(est: dict[str, float]) -> bool:
        return est["memory_gb"] <= mem and (gf is None or est["gflop_per_iteration"] <= gf)

    min_b = int(d["min_batch"])
    pr, strides, kernels, div, feats, est = describe(patch, min_b)
    while not fits(est):
        ratio = np.asarray(pr, dtype=np.float64) / med
        order = sorted(range(dims), key=lambda a: (-ratio[a], -pr[a]))
        shrunk = False
        for a in order:
            if pr[a] > div[a] and pr[a] - div[a] >= MIN_BOTTLENECK:
                patch = [float(x) for x in pr]
                patch[a] = pr[a] - div[a]
                shrunk = True
                break
        if not shrunk:
            raise ConfigError(f"no patch fits the budget ({mem:g} GB, {gf} GFLOP per iteration) even at "
                              f"{pr}; raise --memory-gb")
        pr, strides, kernels, div, feats, est = describe(patch, min_b)
    batch = min_b
    cap_b = int(d["max_batch"] if dims == 3 else MAX_BATCH_2D)
    if dataset_voxels:
        cap_b = max(min_b, min(cap_b, int(MAX_BATCH_FRACTION * dataset_voxels / float(np.prod(pr)))))
    while batch < cap_b:
        nxt = estimate(pr, batch + 1, feats, strides, kernels, in_channels=in_channels, out_channels=out_channels)
        if not fits(nxt):
            break
        batch, est = batch + 1, nxt
    model: dict[str, Any] = {"name": "unet", "features": feats, "strides": strides, "norm": "instance",
                             "deep_supervision": True}
    if any(k != 3 for lvl in kernels for k in lvl):
        model["kernels"] = kernels
    return {"spacing_mm": [float(round(s, 6)) for s in spacing], "patch_size": pr, "batch_size": batch,
            "divisor": div, "poolings_per_axis": [sum(st[a] == 2 for st in strides) for a in range(dims)],
            "kernels": kernels, "model": model, "median_shape": [int(round(m)) for m in med],
            "estimate": {k: round(v, 3) for k, v in est.items()}}


def _shape_at(fp: dict[str, Any], spacing: Sequence[float]) -> np.ndarray:
    return np.asarray(fp["median_shape"], dtype=np.float64) * np.asarray(fp["median_spacing_mm"]) / np.asarray(spacing)


def lowres_spacing(spacing: Sequence[float], shape: Sequence[float], patch_voxels: float) -> list[float]:
    """3d_lowres spacing: grow the spacing by :data:`LOWRES_STEP` per step (the finer axes first
    when anisotropic, all together once they are within :data:`ANISO_KERNEL_FACTOR`) until the
    median case has at most twice ``patch_voxels`` voxels."""
    sp = np.asarray(spacing, dtype=np.float64)
    phys = np.asarray(shape, dtype=np.float64) * sp
    for _ in range(200):
        if float(np.prod(phys / sp)) <= 2 * patch_voxels:
            break
        grow = sp < sp.max() / ANISO_KERNEL_FACTOR
        sp = sp * np.where(grow | ~grow.any(), LOWRES_STEP, 1.0)
    return [float(round(s, 6)) for s in sp]


def plan_experiment(fp: dict[str, Any], *, modalities: Sequence[str], labels: dict[int, str], device: str = "cpu",
                    memory_gb: float | None = None, gflop_per_iteration: float | None = None,
                    channel_fps: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """All configurations for a data set: see the module doc and ``docs/planning.md``.

    ``fp``: the fingerprint of channel 0 (:func:`medseg.preprocess.fingerprint.fingerprint`);
    ``channel_fps``: one fingerprint per channel (default ``[fp]``) for the per-channel normalisation.
    """
    channel_fps = list(channel_fps or [fp])
    if len(channel_fps) != len(modalities):
        raise ConfigError(f"{len(modalities)} modalities for {len(channel_fps)} channel fingerprints")
    d = DEVICE_DEFAULTS.get(device)
    if d is None:
        raise ConfigError(f"device must be one of {sorted(DEVICE_DEFAULTS)}, got {device!r}")
    spacing, aniso_axis = target_spacing(fp)
    shape = _shape_at(fp, spacing)
    n_cls = max(labels) + 1
    kw: dict[str, Any] = dict(device=device, memory_gb=memory_gb, gflop_per_iteration=gflop_per_iteration,
              in_channels=len(modalities), out_channels=n_cls)
    all_vox = float(np.prod(shape)) * int(fp["n_cases"])
    norm = [normalization_for(m, cfp) for m, cfp in zip(modalities, channel_fps)]
    norm_field: Any = norm[0] if len(norm) == 1 else norm
    training = {"epochs": d["epochs"], "iters_per_epoch": d["iters_per_epoch"], "amp": d["amp"]}
    configs: dict[str, Any] = {}
    full = plan_configuration(spacing, shape, dataset_voxels=all_vox, **kw)
    configs["3d_fullres"] = {**full, "normalization": norm_field, "training": training,
                             "why": "always offered"}
    slice_axis = int(np.argmax(spacing))
    keep = [a for a in range(3) if a != slice_axis]
    two = plan_configuration([spacing[a] for a in keep], [shape[a] for a in keep],
                             dataset_voxels=float(np.prod(shape[keep])) * int(fp["n_cases"]) * shape[slice_axis],
                             **kw)
    configs["2d"] = {**two, "slice_axis": slice_axis, "normalization": norm_field, "training": training,
                     "why": f"always offered; slices along axis {slice_axis} (the coarsest)"}
    coverage = float(np.prod(full["patch_size"])) / float(np.prod(shape))
    if coverage < LOWRES_COVERAGE:
        lsp = lowres_spacing(spacing, shape, float(np.prod(full["patch_size"])))
        low = plan_configuration(lsp, _shape_at(fp, lsp), dataset_voxels=None, **kw)
        configs["3d_lowres"] = {**low, "normalization": norm_field, "training": training,
                                "why": f"the 3d_fullres patch covers {coverage:.0%} of the median case "
                                       f"(< {LOWRES_COVERAGE:.0%})"}
    budget = {"device": device, "memory_gb": float(memory_gb if memory_gb is not None else d["memory_gb"]),
              "gflop_per_iteration": gflop_per_iteration if gflop_per_iteration is not None
              else d["gflop_per_iteration"]}
    return {"format": PLAN_FORMAT, "budget": budget, "target_spacing_mm": spacing,
            "anisotropic_axis": aniso_axis, "median_shape_at_target": [int(round(s)) for s in shape],
            "modalities": list(modalities), "labels": {int(k): str(v) for k, v in labels.items()},
            "configurations": configs}
