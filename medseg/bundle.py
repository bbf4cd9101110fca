"""Model bundles: a folder holding everything needed to run or continue a trained model.

Layout::

    BUNDLE/bundle.yaml            architecture (registry name + kwargs), preprocessing plan, label
                                  names, patch size, spacing, training summary
    BUNDLE/model.safetensors      weights to use (best validation epoch; the last one without validation)
    BUNDLE/last.safetensors       weights after the last finished epoch (for resuming)
    BUNDLE/train_state.pt         optimiser state, RNG states, epoch, history (plain tensors and
                                  numbers; read with ``torch.load(weights_only=True)``)
    BUNDLE/config.resolved.yaml   the training config after defaults and overrides
    BUNDLE/curves.csv, curves.png training curves

Weights are safetensors: loading never executes pickled code. A wrong architecture or a damaged
file raises :class:`~medseg.errors.InputError` naming the file and what does not match.

A bundle is checked when it is loaded, before any case (code ``bad_bundle`` unless said otherwise):
only the keys of :data:`KNOWN_KEYS` (a ``weights: ../../x`` entry is an error, not ignored);
weight files are regular files inside the bundle folder (no symlink, nothing outside it: code
``unsafe_path``); sizes are plausible (:data:`MAX_PATCH_VOXELS`, spacing within
:data:`SPACING_RANGE_MM`, at most :data:`MAX_LABELS` labels and :data:`MAX_CHANNELS` channels, a
network of at most :data:`MAX_PARAMS` parameters, counted on torch's ``meta`` device before
anything is allocated; code ``implausible``). :func:`bundle_sha256` identifies exactly what was loaded.

>>> model, meta = load_bundle("runs/hippocampus_unet")      # doctest: +SKIP
>>> meta["labels"]                                           # doctest: +SKIP
{0: 'background', 1: 'anterior', 2: 'posterior'}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg import config as cfgmod
from medseg.errors import InputError
from medseg.weights import BUNDLE_FORMAT, load_state_into, load_weights, save_weights

log = logging.getLogger("medseg.bundle")

#: the top-level keys of bundle.yaml (anything else is refused: it would be ignored silently)
KNOWN_KEYS = frozenset({"format", "model", "labels", "channels", "plan", "patch_size", "slice_axis", "spacing_mm",
                        "folds", "data", "training", "inference", "postprocess", "crossval", "weights_storage",
                        "shipped", "input_guard"})
MAX_PATCH_VOXELS = 1 << 24          # 256^3: a larger sliding window is a damaged or hostile bundle
SPACING_RANGE_MM = (1e-2, 1e2)      # target voxel spacing of the plan
MAX_LABELS = 1000
MAX_CHANNELS = 64
MAX_PARAMS = 1 << 29                # 537 M parameters (2 GiB as float32)
META_FILE = "bundle.yaml"
WEIGHTS = {"best": "model.safetensors", "last": "last.safetensors"}
def write_meta(bundle_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``bundle.yaml`` atomically (adds the format tag)."""
    data = {"format": BUNDLE_FORMAT, **{k: v for k, v in meta.items() if k != "format"}}
    return cfgmod.save_yaml(data, Path(bundle_dir) / META_FILE)


def read_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and check ``bundle.yaml`` of a bundle folder."""
    d = Path(bundle_dir)
    p = d / META_FILE
    if not p.is_file():
        raise InputError(f"not a model bundle: {META_FILE} is missing", path=d, code="not_a_bundle")
    from medseg.errors import MedsegError

    try:
        meta = cfgmod.load_yaml(p)
    except MedsegError as exc:
        code = exc.code if exc.code in ("yaml_too_complex", "duplicate_key") else "corrupt"
        raise InputError(f"cannot read the bundle description: {exc.problem}", path=p, code=code) from None
    except Exception as exc:
        raise InputError(f"cannot read the bundle description: {exc}", path=p, code="corrupt") from None
    unknown = sorted(str(k) for k in set(meta) - KNOWN_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) in bundle.yaml: {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(KNOWN_KEYS))}); a bundle is never partly understood", path=p,
                         code="bad_bundle")
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"unknown bundle format {meta.get('format')!r} (expected {BUNDLE_FORMAT})", path=p,
                         code="bad_bundle")
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(
            model.get("kwargs", {}), dict):
        raise InputError("bundle.yaml lacks model.name / model.kwargs", path=p, code="bad_bundle")
    if isinstance(meta.get("labels"), dict):
        try:
            meta["labels"] = {int(k): str(v) for k, v in meta["labels"].items()}
        except (TypeError, ValueError):
            raise InputError("bundle.yaml labels must map label numbers to names", path=p, code="bad_bundle") from None
    check_plausible(meta, p)
    return meta


def _ints(value: Any, n: tuple[int, ...]) -> list[int] | None:
    if not isinstance(value, list) or len(value) not in n:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return list(value)


def check_plausible(meta: dict[str, Any], path: Path) -> None:
    """Refuse sizes no real bundle has, before anything is allocated (code ``implausible``)."""
    import math

    def bad(msg: str) -> InputError:
        return InputError(f"bundle.yaml: {msg}; the bundle is damaged or not trustworthy", path=path,
                          code="implausible")

    for where, patch in (("patch_size", meta.get("patch_size")),
                         ("plan.patch_size", (meta.get("plan") or {}).get("patch_size")
                          if isinstance(meta.get("plan"), dict) else None)):
        if patch is None:
            continue
        vals = _ints(patch, (2, 3))
        if vals is None or any(v < 1 for v in vals):
            raise bad(f"{where} = {patch!r} must be 2 or 3 positive whole numbers")
        if math.prod(vals) > MAX_PATCH_VOXELS:
            raise bad(f"{where} = {vals} is {math.prod(vals):,} voxels per window (most {MAX_PATCH_VOXELS:,})")
    lo, hi = SPACING_RANGE_MM
    for where, sp in (("spacing_mm", meta.get("spacing_mm")),
                      ("plan.spacing_mm", (meta.get("plan") or {}).get("spacing_mm")
                       if isinstance(meta.get("plan"), dict) else None)):
        if sp is None:
            continue
        ok = isinstance(sp, list) and len(sp) in (2, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi for v in sp)
        if not ok:
            raise bad(f"{where} = {sp!r} must be 2 or 3 spacings between {lo} and {hi} mm")
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, dict) or len(labels) > MAX_LABELS
                               or any(k < 0 or k > 65535 for k in labels)):
        raise bad(f"labels must map at most {MAX_LABELS} label numbers in 0..65535 to names")
    ch = meta.get("channels", 1)
    if not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= MAX_CHANNELS:
        raise bad(f"channels = {ch!r} must be a whole number in 1..{MAX_CHANNELS}")


def build_model(meta: dict[str, Any]):
    """Instantiate the architecture a bundle describes (random weights). The network is first built
    on torch's ``meta`` device (no memory) and refused when it has more than :data:`MAX_PARAMS`
    parameters (code ``implausible``): kwargs asking for 32,768 features never allocate."""
    import torch

    from medseg.models import create_seg_model

    m = meta["model"]
    kwargs = m.get("kwargs", {})
    try:
        with torch.device("meta"):
            probe = create_seg_model(m["name"], **kwargs)
        n = sum(p.numel() for p in probe.parameters())
        del probe
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"model '{m['name']}' does not accept the bundle's kwargs: {exc}", code="bad_bundle") from None
    except Exception as exc:  # noqa: BLE001 - a registered model may raise anything for hostile kwargs
        raise InputError(f"model '{m['name']}' cannot be built from the bundle's kwargs ({exc.__class__.__name__}: "
                         f"{exc})", code="bad_bundle") from None
    if n > MAX_PARAMS:
        raise InputError(f"model '{m['name']}' with the bundle's kwargs has {n:,} parameters (most {MAX_PARAMS:,}): "
                         "the bundle is damaged or not trustworthy", code="implausible")
    try:
        return create_seg_model(m["name"], **kwargs)
    except TypeError as exc:
        raise InputError(f"model '{m['name']}' does not accept the bundle's kwargs: {exc}", code="bad_bundle") from None


def load_bundle(bundle_dir: str | Path, *, weights: str = "best", device: str | Any = "cpu"):
    """Load a bundle -> ``(model in eval mode on device, meta dict)``.

    ``weights``: ``"best"`` (model.safetensors) or ``"last"`` (last.safetensors).
    """
    models, meta, _ = load_models(bundle_dir, weights=weights, device=device)
    if len(models) != 1:
        raise InputError(f"a fold ensemble of {len(models)} models: load it with load_models", path=bundle_dir,
                         code="bad_params")
    return models[0], meta


def fold_weight_paths(bundle_dir: str | Path, meta: dict[str, Any], *, weights: str = "best",
                      folds: list[int] | None = None) -> list[Path]:
    """Weight files of a bundle: ``[BUNDLE/model.safetensors]``, or for a fold ensemble (``folds:`` in
    bundle.yaml, written by ``medseg train --plan ... --fold all``) ``BUNDLE/fold_F/model.safetensors``
    of every listed fold (or of the subset ``folds``). The paths are fixed by the fold numbers, never
    read from the YAML."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
    d = Path(bundle_dir)
    have = meta.get("folds")
    if have is None:
        if folds:
            raise InputError(f"--folds {folds}: this bundle holds one model, not a fold ensemble", path=d,
                             code="bad_params")
        return [d / WEIGHTS[weights]]
    if not isinstance(have, list) or not have or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0
                                                         for f in have):
        raise InputError(f"bundle.yaml folds {have!r} must be a list of fold numbers", path=d / META_FILE,
                         code="bad_bundle")
    pick = list(have) if not folds else list(folds)
    missing = sorted(set(pick) - set(have))
    if missing:
        raise InputError(f"--folds: fold(s) {missing} are not in this bundle (it holds {have})", path=d,
                         code="bad_params")
    return [d / f"fold_{f}" / WEIGHTS[weights] for f in pick]


def check_inside(bundle_dir: str | Path, path: str | Path) -> Path:
    """``path`` if it is a regular file inside ``bundle_dir`` reached without symlinks; otherwise
    InputError (``missing``, ``unsafe_path`` or ``not_a_file``). Weights linked from elsewhere would
    make the bundle's description and its checksum say nothing about what is run."""
    import os
    import stat

    d, p = Path(bundle_dir), Path(path)
    root = d.resolve()
    rel = p.relative_to(d)
    cur = d
    for part in rel.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise InputError("weights file is missing", path=p, code="missing") from None
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"{rel} is a symbolic link (to {os.readlink(cur)}); a bundle's weights must be regular "
                             "files inside the bundle folder", path=cur, code="unsafe_path")
    if root not in p.resolve().parents:
        raise InputError("weights file lies outside the bundle folder", path=p, code="unsafe_path")
    if not stat.S_ISREG(os.lstat(p).st_mode):
        raise InputError("weights are not a regular file", path=p, code="not_a_file")
    return p


def bundle_sha256(bundle_dir: str | Path, weight_paths: list[Path], digests: list[str] | None = None) -> str:
    """SHA-256 identifying a loaded bundle: of ``bundle.yaml`` and of every weight file used (their
    paths inside the bundle and their own SHA-256, one line each)."""
    import hashlib

    from medseg.manifest import sha256_file

    d = Path(bundle_dir)
    digests = digests if digests is not None else [sha256_file(p) for p in weight_paths]
    lines = [f"{META_FILE} {sha256_file(d / META_FILE)}"]
    lines += [f"{Path(p).relative_to(d).as_posix()} {h}" for p, h in zip(weight_paths, digests)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def bundle_weight_files(bundle_dir: str | Path, meta: dict[str, Any], *, weights: str = "best",
                        folds: list[int] | None = None) -> list[Path]:
    """:func:`fold_weight_paths`, each checked to be a regular file inside the bundle (:func:`check_inside`)."""
    d = Path(bundle_dir)
    paths = fold_weight_paths(d, meta, weights=weights, folds=folds)
    for wpath in paths:
        if weights == "last" and not wpath.exists() and meta.get("weights_storage"):
            raise InputError("this bundle was exported for shipping with its best weights only (no last-epoch "
                             "weights): use --weights best", path=wpath, code="missing")
        check_inside(d, wpath)
    return paths


def load_models(bundle_dir: str | Path, *, weights: str = "best", device: str | Any = "cpu",
                folds: list[int] | None = None):
    """Load every model of a bundle -> ``(models in eval mode, meta, weight paths)``: one for a plain
    bundle, one per fold for a fold ensemble (see :func:`fold_weight_paths`)."""
    d = Path(bundle_dir)
    meta = read_meta(d)
    arch = meta["model"]["name"]
    models = []
    paths = bundle_weight_files(d, meta, weights=weights, folds=folds)
    for wpath in paths:
        model = build_model(meta)
        state, fmeta = load_weights(wpath)
        if fmeta.get("architecture") and fmeta["architecture"] != arch:
            raise InputError(f"weights were saved for architecture '{fmeta['architecture']}', but bundle.yaml "
                             f"names '{arch}'", path=wpath, code="wrong_architecture")
        load_state_into(model, state, path=wpath, architecture=arch)
        models.append(model.to(device).eval())
    return models, meta, paths


def export_bundle(src: str | Path, dst: str | Path, *, storage: str = "float16", weights: str = "best") -> Path:
    """Copy the bundle ``src`` to the new folder ``dst`` with only what prediction needs:
    ``bundle.yaml`` and the chosen weights (``model.safetensors``; per fold ``fold_F/model.safetensors``
    for a fold ensemble), re-stored as ``storage`` (:data:`STORAGE`), plus the training curves.
    No optimiser state, last-epoch weights or out-of-fold predictions. ``dst`` must not exist; it
    appears whole or not at all (written beside it, then renamed)."""
    import shutil

    s, d = Path(src), Path(dst)
    if d.exists():
        raise InputError("output folder already exists; give a new one", path=d, code="exists")
    meta = read_meta(s)
    paths = fold_weight_paths(s, meta, weights=weights)
    arch = meta["model"]["name"]
    tmp = d.with_name(f".{d.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for wpath in paths:
            rel = wpath.relative_to(s)
            state, fmeta = load_weights(wpath)
            out = tmp / rel.parent / WEIGHTS["best"]
            out.parent.mkdir(parents=True, exist_ok=True)
            save_weights(state, out, architecture=fmeta.get("architecture", arch), storage=storage)
            for extra in ("curves.csv",):
                if (wpath.parent / extra).is_file():
                    shutil.copy2(wpath.parent / extra, out.parent / extra)
        meta = {k: v for k, v in meta.items() if k != "format"}
        meta["weights_storage"] = storage
        write_meta(tmp, meta)
        tmp.rename(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d
