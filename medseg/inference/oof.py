"""Out-of-fold predictions of a trained fold (``medseg train --plan``): each validation case predicted
by the fold that held it out, on the case's own input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.bundle import read_meta
from medseg.errors import InputError
from medseg.fsutil import atomic_path


def write_oof(fold_dir: str | Path, *, device: str = "auto", tta_axes: tuple[int, ...] | list[int] = ()) -> list[Path]:
    """Out-of-fold predictions of a finished fold: every validation case of ``fold_dir`` predicted by
    that fold's model on its own input grid, written to ``fold_dir/oof/CASE.nii.gz`` with its class
    probabilities in ``CASE.npz`` (``probabilities``, float16, (K, z, y, x)) - atomically, the
    probabilities first; cases already there are kept, so an interrupted run resumes. These are what
    post-processing and configuration choices are scored on: no fold ever predicts a case it was
    trained on. ``tta_axes``: mirror as the ensemble bundle will at prediction, so that what is
    chosen on these predictions is chosen on what the bundle outputs."""
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume, write_volume
    from medseg.io.dataset import scan_dataset

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

    predictor = Predictor.from_bundle(d, device=resolve_device(device), tta_axes=tuple(tta_axes))
    out = []
    for cid in val:
        target = d / "oof" / f"{cid}.nii.gz"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            pred = predictor.predict_volume([read_volume(p) for p in files[cid].images], probabilities=True)
            with atomic_path(target.with_name(f"{cid}.npz")) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, probabilities=pred.probabilities.astype(np.float16))
            write_volume(pred.label, target)
        out.append(target)
    return out
