"""Whole-slide pipeline stages: ``wsi_tile`` -> ``wsi_features`` -> ``wsi_mil`` -> ``wsi_bcl``.

``medseg wsi train --config CFG`` runs them (see ``configs/wsi/train_demo.yaml``). Each writes
inside the output folder: ``tiles/<slide>/``, ``features/<slide>/features.h5``, ``model/`` (the
bundle for ``medseg wsi predict``) and ``bcl/round_<r>/``. Bad slides and label rows are reported
in each stage's result and skipped; the rest go on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.fsutil import atomic_write_text
from medseg.io.wsi import SLIDE_EXTENSIONS, slide_ids
from medseg.stages.base import Context, register_stage

if TYPE_CHECKING:
    import torch

    from medseg.mil.fit import MILEnsemble, MILTrainConfig
    from medseg.wsi.features import EncoderSpec
    from medseg.wsi.tile_slides import TilingParams

log = logging.getLogger("medseg.wsi.stages")

STATE_KEY = "_wsi"  # ctx.results[STATE_KEY]: the WsiState of this run


@dataclass
class WsiState:
    """What the whole-slide stages hand on to each other, in ``ctx.results["_wsi"]``.

    ``wsi_tile`` creates it; ``wsi_features`` fills the encoder fields; ``wsi_mil`` the training
    fields, which ``wsi_bcl`` needs (``labels is None``: ``wsi_mil`` has not run).
    """

    tiling: TilingParams
    """How every slide was tiled (resolution in um/px, tile size, tissue threshold...)."""
    slides: dict[str, str]
    """Slide id -> slide file path, for every slide given to ``wsi_tile``."""
    spec: EncoderSpec | None = None
    """The tile encoder (name, weights file, normalisation) the features were computed with."""
    device: torch.device | None = None
    """The device the features were computed on; BCL trains there too."""
    batch_size: int | None = None
    """Tiles per encoder forward pass in ``wsi_features``."""
    workers: int | None = None
    """Tile-reading workers in ``wsi_features``."""
    labels: dict[str, int] | None = None
    """Slide id -> class index, for the slides ``wsi_mil`` trained on (in training order)."""
    classes: list[str] | None = None
    """Class names (label values of the CSV; their index is the class), or None: labels are 0/1."""
    mil_cfg: MILTrainConfig | None = None
    """The aggregator's training configuration (``wsi_bcl`` starts from it)."""
    ens: MILEnsemble | None = None
    """The aggregator ``wsi_mil`` trained."""
    note: str | None = None
    """Free text stored in the bundle (e.g. "made-up labels")."""


def _slides(ctx: Context, slides: Any) -> list[Path]:
    items = [slides] if isinstance(slides, str) else list(slides or [])
    out: list[Path] = []
    for it in items:
        p = ctx.resolve_input(it)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_EXTENSIONS)
        else:
            out.append(p)
    if not out:
        raise ConfigError("wsi_tile: 'slides' names no slide files")
    return out


def _tiling_params():
    from medseg.wsi.tile_slides import TilingParams

    return TilingParams


def _bcl_params():
    from medseg.wsi.bcl import BCLConfig

    return BCLConfig


@register_stage("wsi_tile", accepts_of=_tiling_params)
def stage_tile(ctx: Context, slides: Any = None, **params: Any) -> dict[str, Any]:
    """Tissue masks and tile grids for every slide (params: TilingParams keys)."""
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    try:
        tp = TilingParams(**params)
    except TypeError as exc:
        raise ConfigError(f"wsi_tile: {exc}") from None
    paths = _slides(ctx, slides)
    rows = tile_slides(paths, ctx.out("tiles"), tp)
    atomic_write_text(ctx.out("tiles", "tiling.json"), json.dumps(rows, indent=1))
    ctx.results[STATE_KEY] = WsiState(tiling=tp, slides=dict(zip(slide_ids(paths), map(str, paths))))
    return {"tiled": [r["slide"] for r in rows if r["status"] == "ok"],
            "failed": {r["slide"]: r["status"] for r in rows if r["status"] not in ("ok",)}}


@register_stage("wsi_features")
def stage_features(ctx: Context, encoder: str = "tile_resnet_small", weights: str | None = None,
                   batch_size: int = 32, workers: int = 2, device: str = "auto", seed: int = 0,
                   backend: str = "torch") -> dict[str, Any]:
    """Encode every tiled slide. An encoder without ``weights`` is initialised from ``seed`` and its
    initial weights saved, so prediction sees exactly the same features. ``backend``: what runs the
    encoder (``torch``, ``openvino`` or ``auto``, as ``medseg wsi features --backend``; OpenVINO gave
    resnet50_trunc 2.4x end to end on the CPU, its features equal to float32 rounding)."""
    import torch

    from medseg.device import resolve_device
    from medseg.inference.backends import encoder_backend
    from medseg.models.encoders import create_encoder, save_weights
    from medseg.wsi.features import EncoderSpec, extract_features_batch

    st = _state(ctx)
    if weights is None:
        torch.manual_seed(seed)
        weights = str(save_weights(create_encoder(encoder), ctx.out("encoder_init.safetensors")))
    else:
        weights = str(ctx.resolve_input(weights))
    spec = EncoderSpec(name=encoder, weights=weights)
    dev = resolve_device(device)
    prepare = encoder_backend(backend, batch=batch_size, device=dev)   # fails here, before any slide
    rows = extract_features_batch(ctx.out("tiles"), ctx.out("features"), spec, device=dev, batch_size=batch_size,
                                  workers=workers, slide_mpp=st.tiling.slide_mpp, prepare=prepare)
    st.spec, st.device, st.batch_size, st.workers = spec, dev, batch_size, workers
    return {"rows": rows}


def _state(ctx: Context) -> WsiState:
    st = ctx.results.get(STATE_KEY)
    if st is None:
        raise ConfigError(f"stage '{ctx.stage_name}' needs the wsi_tile stage before it")
    return st


@register_stage("wsi_mil")
def stage_mil(ctx: Context, labels: str, classes: list[str] | None = None,
              mil: dict[str, Any] | None = None, seed: int = 0, cv_folds: int = 0,
              cv_repeats: int = 1, note: str | None = None) -> dict[str, Any]:
    """Train the aggregator on the labelled slides' features; writes the bundle to ``model/``.

    ``note`` is stored in ``bundle.json`` and printed by ``medseg wsi predict`` (e.g. "made-up labels").

    With ``cv_folds >= 2`` it first runs stratified k-fold CV over the slides and writes
    ``mil_cv.json`` (AUC, accuracy, balanced accuracy, F1: mean, sd, 95 % t-interval over folds)."""
    from medseg.mil.bags import Bags
    from medseg.mil.fit import MILTrainConfig, predict_bags
    from medseg.mil.select import fit_mil_selected
    from medseg.wsi.bundle import save_bundle
    from medseg.wsi.features import load_features
    from medseg.wsi.labels import read_labels

    st = _state(ctx)
    lab, problems = read_labels(ctx.resolve_input(labels), slides=list(st.slides), classes=classes)
    feats, ys, ids = [], [], []
    for sid, y in sorted(lab.items()):
        f = ctx.out("features", sid, "features.h5")
        if not f.is_file():
            problems[sid] = f"slide '{sid}' has no features (no tissue or failed earlier)"
            continue
        x, _, meta = load_features(f)
        if abs(meta["mpp"] - st.tiling.mpp) > 1e-6:
            problems[sid] = f"slide '{sid}' features are at {meta['mpp']} um/px, not {st.tiling.mpp}"
            continue
        feats.append(x); ys.append(y); ids.append(sid)
    for v in problems.values():
        log.error("%s", v)
    if len(set(ys)) < 2:
        raise InputError(f"need labelled slides of both classes with features; have {len(ys)} "
                         f"({', '.join(problems.values()) or 'no problems reported'})", code="too_few_slides")
    cfg = MILTrainConfig.from_dict(mil)
    bags = Bags(feats, np.asarray(ys), ids)
    cv_note: dict[str, Any] = {}
    if cv_folds >= 2:
        from medseg.mil.crossval import cross_validate

        try:
            cv = cross_validate(bags, cfg, folds=cv_folds, repeats=cv_repeats, seed=seed)
            atomic_write_text(ctx.out("mil_cv.json"), json.dumps(cv, indent=1))
            cv_note = {k: cv[k] for k in cv if k.endswith(("_mean", "_ci95"))}
        except InputError as exc:
            cv_note = {"skipped": exc.problem}
            log.warning("cross-validation skipped: %s", exc.problem)
    ens, chosen = fit_mil_selected(bags, cfg, seed=seed)  # chosen by inner CV when select_grid/select_epochs set
    st.labels, st.classes, st.mil_cfg, st.ens, st.note = dict(zip(ids, ys)), classes, ens.config, ens, note
    save_bundle(ctx.out("model"), tiling=st.tiling, spec=st.spec, ens=ens, classes=classes,
                extra={"trained_on": ids, "stage": "wsi_mil", **({"note": note} if note else {})})
    train_prob = predict_bags(ens, bags)
    return {"slides": ids, "problems": problems, "model": str(ctx.out("model")), "cv": cv_note, "mil_fit": chosen,
            "train_probabilities": {i: round(float(p), 4) for i, p in zip(ids, train_prob)}}


@register_stage("wsi_bcl", accepts_of=_bcl_params)
def stage_bcl(ctx: Context, **params: Any) -> dict[str, Any]:
    """BCL rounds on the labelled slides' tiles; the last round's encoder + aggregator become the bundle."""
    from medseg.models.encoders import save_weights
    from medseg.wsi.bcl import BCLConfig, load_round, run_bcl
    from medseg.wsi.bundle import save_bundle
    from medseg.wsi.features import EncoderSpec
    from medseg.wsi.patches import SlidePatchSource
    from medseg.wsi.tiling import load_tiles

    st = _state(ctx)
    if st.labels is None:
        raise ConfigError("wsi_bcl needs the wsi_mil stage before it")
    spec = st.spec
    cfg = BCLConfig.from_dict({"encoder": spec.name, "encoder_weights": spec.weights,
                               "mil": {k: v for k, v in vars(st.mil_cfg).items()}, **params})
    ids = list(st.labels)
    grids = [load_tiles(ctx.out("tiles", i, "tiles.h5"))[0] for i in ids]
    src = SlidePatchSource([st.slides[i] for i in ids], grids, [st.labels[i] for i in ids], ids=ids,
                           slide_mpp=st.tiling.slide_mpp, mean=spec.mean, std=spec.std)
    try:
        hist = run_bcl(src, cfg, ctx.out("bcl"), device=st.device)
    finally:
        src.close()
    model, ens = load_round(ctx.out("bcl"), cfg.rounds, cfg.encoder)
    enc_path = save_weights(model.encoder, ctx.out("bcl", "encoder_final.safetensors"))
    new_spec = EncoderSpec(name=spec.name, weights=str(enc_path), mean=spec.mean, std=spec.std)
    save_bundle(ctx.out("model"), tiling=st.tiling, spec=new_spec, ens=ens, classes=st.classes,
                extra={"trained_on": ids, "stage": "wsi_bcl", "bcl_rounds": cfg.rounds,
                       **({"note": st.note} if st.note else {})})
    return {"rounds": [{k: v for k, v in h.items() if k != "config"} for h in hist], "model": str(ctx.out("model"))}
