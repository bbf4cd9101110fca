"""Training configuration: defaults, allowed keys and validation.

A training config has six sections; every key has a default so a config only names what it
changes. Unknown keys raise :class:`~medseg.errors.ConfigError` naming the key::

    data:     {root: ../shared/data/hippocampus, fold: 0, num_folds: 5, seed: 12345}
    model:    {name: unet, spatial_dims: 3, ...kwargs passed to create_seg_model}
    plan:     {spacing_mm: auto, patch_size: auto, normalization: auto, divisor: 8}
    augment:  {flip: true, p_spatial: 0.3, rotate_deg: 15, ...}
    training: {epochs: 50, iters_per_epoch: 100, batch_size: 2, optimizer: adamw, lr: 1e-3, ...}
    output:   {dir: runs/hippocampus_unet}

``model.spatial_dims: 2`` trains the 2D variant of the model slice by slice (see
:func:`spatial_dims`); the bundle then holds the 2D network, which ``medseg predict`` runs
slice-wise along the same axis.

>>> cfg = resolve_config({"data": {"root": "x"}, "output": {"dir": "y"}})
>>> cfg["training"]["optimizer"], cfg["plan"]["patch_size"]
('adamw', 'auto')
"""

from __future__ import annotations

import copy
from typing import Any

from medseg.config import check_keys
from medseg.errors import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "root": None,            # MSD / nnU-Net folder with imagesTr/ and labelsTr/
        "fold": 0,               # validation fold; "all" trains on every case without validation
        "num_folds": 5,
        "seed": 12345,           # seed of the fold split (independent of the training seed)
        "cache": True,           # keep the preprocessed data set in RAM (the only mode for now)
        "max_cases": None,       # use only the first N cases (sorted) - for smoke tests
        "labels": None,          # {index: name}; overrides dataset.json (background 0 is implied)
    },
    "model": {"name": "unet"},   # + spatial_dims: 2 | 3 (default 3; not a default key, so older runs resume)
    "plan": {
        "spacing_mm": "auto",    # target spacing (z, y, x); auto = median spacing of the data
        "patch_size": "auto",    # (z, y, x) voxels; auto = median shape rounded up to `divisor`
        "normalization": "auto", # auto | zscore | zscore_nonzero | none | {scheme: ct, ...} (preprocess.normalize)
        "divisor": 8,            # patch size and padded validation volumes are multiples of this
        "max_patch_voxels": 128 ** 3,
    },
    "augment": {
        "flip": True,            # random mirror along each axis (p = 0.5 each)
        "p_spatial": 0.3,        # probability of a rotation/scaling/elastic warp of a sample
        "rotate_deg": 15.0,      # max |angle| per axis
        "scale": [0.85, 1.25],   # zoom range (>1 = zoom in)
        "elastic": False,        # add a smooth random displacement to the warp
        "elastic_sigma_vox": 4.0,
        "elastic_alpha_vox": 2.0,
        "p_gamma": 0.3, "gamma": [0.7, 1.5],
        "p_noise": 0.15, "noise_std": [0.0, 0.1],
        "p_blur": 0.2, "blur_sigma": [0.5, 1.0],
        "p_contrast": 0.15, "contrast": [0.75, 1.25],
        "p_brightness": 0.15, "brightness": [0.75, 1.25],
    },
    "training": {
        "epochs": 50,
        "iters_per_epoch": 100,
        "batch_size": 2,
        "optimizer": "adamw",    # adamw | sgd (Nesterov)
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "momentum": 0.99,        # SGD only
        "schedule": "poly",      # poly | cosine | constant
        "poly_power": 0.9,
        "warmup_epochs": 0,      # linear warm-up from lr/100
        "grad_clip": 12.0,       # max gradient norm; 0 = off
        "foreground_fraction": 0.33,
        "loss": "dice_ce",       # dice_ce | dice | ce
        "deep_supervision": "auto",  # auto = on when the model has forward_with_aux
        "amp": "auto",           # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
        "channels_last": "auto", # auto = on CUDA only
        "compile": False,
        "deterministic": True,
        "seed": 0,
        "val_every": 1,
        "num_workers": 0,
        "device": "auto",
        "progress": True,
        "threads": None,         # torch intra-op threads (None = torch default)
    },
    "output": {"dir": None},
}

_CHOICES = {
    ("training", "optimizer"): ("adamw", "sgd"),
    ("training", "schedule"): ("poly", "cosine", "constant"),
    ("training", "amp"): ("auto", "bf16", "fp16", "off"),
    ("training", "loss"): ("dice_ce", "dice", "ce"),
}


def _check_normalization(v) -> None:
    """``auto``, a method of :mod:`medseg.preprocess.normalize` (a scheme name or ``{scheme: ..., ...}``,
    e.g. the CT entry ``{scheme: ct, clip: [lo, hi], mean, std}``), or a list of methods per channel."""
    from medseg.preprocess.normalize import method_spec

    if v == "auto":
        return
    for m in (v if isinstance(v, list) and v else [v]):
        try:
            method_spec(m)
        except ValueError as exc:
            raise ConfigError(f"plan.normalization: {exc}") from None


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Merge ``cfg`` over :data:`DEFAULTS`, reject unknown keys and bad values.

    Returns a new dict with every section complete (the model section keeps its extra kwargs).
    """
    if not isinstance(cfg, dict):
        raise ConfigError("training config must be a mapping with sections data, model, plan, augment, "
                          "training, output")
    check_keys(cfg, DEFAULTS, where="training config")
    out = copy.deepcopy(DEFAULTS)
    for section, values in cfg.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {type(values).__name__}")
        if section != "model":
            check_keys(values, DEFAULTS[section], where=f"config section '{section}'")
        out[section].update(copy.deepcopy(values))
    _validate(out)
    return out


def _validate(cfg: dict[str, Any]) -> None:
    if not cfg["data"]["root"]:
        raise ConfigError("data.root is required (folder with imagesTr/ and labelsTr/)")
    if not cfg["output"]["dir"]:
        raise ConfigError("output.dir is required (the model bundle folder)")
    if not isinstance(cfg["model"].get("name"), str):
        raise ConfigError("model.name must name a registered model (e.g. unet)")
    dims = cfg["model"].get("spatial_dims", 3)
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ConfigError(f"model.spatial_dims must be 2 (a 2D model trained on slices along the coarsest axis) "
                          f"or 3, got {dims!r}")
    for (section, key), allowed in _CHOICES.items():
        val = cfg[section][key]
        if isinstance(val, bool) and "off" in allowed:
            # YAML 1.1 reads a bare off / no / false as False (``--set training.amp=off``): it means "off"
            val = cfg[section][key] = "off" if val is False else val
        if val not in allowed:
            raise ConfigError(f"{section}.{key} = {val!r} is not one of {', '.join(allowed)}")
    t = cfg["training"]
    for key in ("epochs", "iters_per_epoch", "batch_size", "val_every"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {t[key]!r}")
    if not isinstance(t["num_workers"], int) or t["num_workers"] < 0:
        raise ConfigError(f"training.num_workers must be an integer >= 0, got {t['num_workers']!r}")
    for key in ("lr", "weight_decay", "warmup_epochs", "grad_clip", "foreground_fraction"):
        if not isinstance(t[key], (int, float)) or isinstance(t[key], bool) or t[key] < 0:
            raise ConfigError(f"training.{key} must be a number >= 0, got {t[key]!r}")
    if t["foreground_fraction"] > 1:
        raise ConfigError("training.foreground_fraction must be in [0, 1]")
    d = cfg["data"]
    if not isinstance(d["num_folds"], int) or d["num_folds"] < 2:
        raise ConfigError(f"data.num_folds must be an integer >= 2, got {d['num_folds']!r}")
    if d["fold"] != "all" and (not isinstance(d["fold"], int) or not 0 <= d["fold"] < d["num_folds"]):
        raise ConfigError(f"data.fold must be 'all' or an integer in [0, {d['num_folds']}), got {d['fold']!r}")
    labels = d["labels"]
    if labels is not None and (not isinstance(labels, dict) or not labels or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 255 for k in labels)):
        raise ConfigError(f"data.labels must map label values 0..255 to names, e.g. {{1: anterior}}, got {labels!r}")
    p = cfg["plan"]
    _check_normalization(p["normalization"])
    for key in ("spacing_mm", "patch_size"):
        v = p[key]
        if v != "auto" and (not isinstance(v, (list, tuple)) or len(v) != 3
                            or not all(isinstance(x, (int, float)) and x > 0 for x in v)):
            raise ConfigError(f"plan.{key} must be 'auto' or three positive numbers (z, y, x), got {v!r}")
    if not isinstance(p["divisor"], int) or p["divisor"] < 1:
        raise ConfigError(f"plan.divisor must be a positive integer, got {p['divisor']!r}")
    a = cfg["augment"]
    for key, val in a.items():
        if key.startswith("p_") and (not isinstance(val, (int, float)) or not 0 <= val <= 1):
            raise ConfigError(f"augment.{key} must be a probability in [0, 1], got {val!r}")
    for key in ("scale", "gamma", "noise_std", "blur_sigma", "contrast", "brightness"):
        v = a[key]
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not v[0] <= v[1]:
            raise ConfigError(f"augment.{key} must be a range [low, high], got {v!r}")


def spatial_dims(cfg: dict[str, Any]) -> int:
    """2 or 3: ``model.spatial_dims`` of a resolved config (3 when absent).

    A 2D model is trained on the 3D patches wrapped in :class:`medseg.models.slicewise.SliceWise`,
    sliced along :func:`medseg.models.slicewise.slicing_axis` of the plan spacing - the axis the
    predictor slices along for 2D bundles.
    """
    return int(cfg["model"].get("spatial_dims", 3))


def model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``create_seg_model`` from the model section (everything but ``name`` and
    ``spatial_dims``, which the trainer passes itself)."""
    kw = {k: v for k, v in cfg["model"].items() if k not in ("name", "spatial_dims")}
    for reserved in ("in_channels", "out_channels"):
        if reserved in kw:
            raise ConfigError(f"model.{reserved} is set by the trainer from the data set; remove it from the "
                              "config")
    return kw
