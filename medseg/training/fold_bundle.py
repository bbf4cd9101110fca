"""One bundle from the folds of ``medseg train --plan ... --fold all``: ``RUN/bundle.yaml`` lists the
folds, whose weights stay in ``RUN/fold_F/model.safetensors``; ``medseg predict --model RUN``
predicts with the mean of the folds' probabilities (``--folds`` picks a subset)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medseg.bundle import WEIGHTS, read_meta, write_meta
from medseg.errors import InputError

#: what must be equal in every fold for their probabilities to be averaged
_SAME = ("model", "labels", "channels", "plan", "patch_size", "slice_axis", "spacing_mm")


def write_fold_ensemble(run_dir: str | Path, folds: Sequence[int]) -> Path:
    """Write ``run_dir/bundle.yaml`` for the fold bundles ``run_dir/fold_F``; InputError when a fold is
    missing its weights or was trained with another model, plan or labels."""
    run = Path(run_dir)
    metas = {}
    for f in folds:
        d = run / f"fold_{f}"
        if not (d / WEIGHTS["best"]).is_file():
            raise InputError(f"fold {f} has no trained weights yet", path=d, code="missing")
        metas[f] = read_meta(d)
    first = metas[folds[0]]
    for f, m in metas.items():
        diff = [k for k in _SAME if m.get(k) != first.get(k)]
        if diff:
            raise InputError(f"fold {f} differs from fold {folds[0]} in {', '.join(diff)}: the folds cannot be "
                             "averaged", path=run / f"fold_{f}", code="bad_bundle")
    meta = {k: v for k, v in first.items() if k not in ("format", "training", "data")}
    meta["folds"] = [int(f) for f in folds]
    d0 = first.get("data", {})
    meta["data"] = {"root": d0.get("root"), "num_folds": d0.get("num_folds"), "split_seed": d0.get("split_seed"),
                    "val_cases": {int(f): m.get("data", {}).get("val_cases", []) for f, m in metas.items()}}
    meta["training"] = {"folds": {int(f): m.get("training", {}) for f, m in metas.items()}}
    return write_meta(run, meta)


def write_oof(fold_dir: str | Path, *, device: str = "auto") -> list[Path]:
    """Out-of-fold predictions of a finished fold: every validation case of ``fold_dir`` predicted by
    that fold's model on its own input grid, written to ``fold_dir/oof/CASE.nii.gz`` (atomically;
    cases already there are kept, so an interrupted run resumes). These are what post-processing and
    configuration choices are scored on: no fold ever predicts a case it was trained on."""
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume, write_volume
    from medseg.training.dataset import scan_dataset

    d = Path(fold_dir)
    meta = read_meta(d)
    data = meta.get("data", {})
    val = list(data.get("val_cases") or [])
    if not val:
        return []
    files = {c.case: c for c in scan_dataset(data["root"]).cases}
    missing = [c for c in val if c not in files]
    if missing:
        raise InputError(f"validation case(s) {', '.join(missing[:5])} are no longer in the data set",
                         path=data["root"], code="missing")
    from medseg.device import resolve_device

    predictor = Predictor.from_bundle(d, device=resolve_device(device))
    out = []
    for cid in val:
        target = d / "oof" / f"{cid}.nii.gz"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            pred = predictor.predict_volume([read_volume(p) for p in files[cid].images])
            write_volume(pred.label, target)
        out.append(target)
    return out
