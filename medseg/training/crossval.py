"""What a ``--fold all`` run learns from its out-of-fold predictions: pooled per-label Dice, the
post-processing kept for each label because it raised that Dice, and - across configurations -
which configuration or pair of configurations to use (:func:`find_best_configuration`).

Every case of the data set is predicted once, by the fold that held it out (``fold_F/oof/``,
:func:`medseg.inference.oof.write_oof`); nothing here looks at a prediction of a case the model
was trained on, so the rules chosen are not fitted to training cases.

>>> result = choose_run_postprocess("runs/la/3d_fullres", folds=[0, 1, 2, 3, 4])   # doctest: +SKIP
>>> result["postprocess"]                                                            # doctest: +SKIP
{'foreground': [{'op': 'keep_largest'}]}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.training")

#: a small component is one under this fraction of the label's 5th-percentile volume in the references
SMALL_FRACTION = 0.1


def oof_pairs(run_dir: str | Path, folds: Sequence[int]) -> list[tuple[str, Path, Path]]:
    """``(case, out-of-fold prediction, reference label)`` for every validation case of ``folds``;
    InputError naming the fold when a prediction is missing."""
    from medseg.bundle import read_meta
    from medseg.io.dataset import scan_dataset

    run = Path(run_dir)
    pairs, refs = [], None
    for f in folds:
        d = run / f"fold_{f}"
        data = read_meta(d).get("data", {})
        if refs is None:
            refs = {c.case: c.label for c in scan_dataset(data["root"]).cases}
        for case in data.get("val_cases") or []:
            pred = d / "oof" / f"{case}.nii.gz"
            if not pred.is_file():
                raise InputError(f"fold {f} has no out-of-fold prediction for {case}; rerun medseg train with "
                                 "the same --fold to write it", path=pred, code="missing")
            if case not in refs:
                raise InputError(f"validation case {case} of fold {f} is no longer in the data set",
                                 path=data["root"], code="missing")
            pairs.append((case, pred, refs[case]))
    return pairs


def candidate_rules(refs: Sequence[np.ndarray], spacings: Sequence[Sequence[float]], labels: Sequence[int]) -> dict:
    """The operations tried, in order: largest component of the foreground, then per label the largest
    component, removal of components smaller than :data:`SMALL_FRACTION` of the label's
    5th-percentile volume in the references, and hole filling."""
    cand: dict[Any, list[dict]] = {"foreground": [{"op": "keep_largest"}]}
    for k in labels:
        vols = [float((r == k).sum()) * float(np.prod(sp)) for r, sp in zip(refs, spacings)]
        vols = [v for v in vols if v > 0]
        ops: list[dict] = [{"op": "keep_largest"}]
        if vols:
            ops.append({"op": "remove_small", "min_volume_mm3": round(SMALL_FRACTION * float(np.percentile(vols, 5)),
                                                                       3)})
        ops.append({"op": "fill_holes"})
        cand[int(k)] = ops
    return cand


def per_label_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], labels: Sequence[int]) -> dict[int, float]:
    """Mean over cases of each label's Dice (a case where both are empty counts 1)."""
    from medseg.postprocess import mean_dice

    return {int(k): round(mean_dice(preds, refs, k), 6) for k in labels}


def choose_run_postprocess(run_dir: str | Path, folds: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """Choose post-processing per label on the pooled out-of-fold predictions of ``folds``.

    Returns ``{"postprocess": rules, "oof": {"cases", "dice", "dice_postprocessed"}}``; ``rules``
    is what :func:`medseg.postprocess.apply_postprocess` takes and what the ensemble bundle stores.
    """
    from medseg.io import read_volume
    from medseg.postprocess import apply_postprocess, choose_postprocess

    pairs = oof_pairs(run_dir, folds)
    preds, refs, spacings = [], [], []
    for case, p, r in pairs:
        pv, rv = read_volume(p, is_label=True), read_volume(r, is_label=True)
        if pv.shape != rv.shape:
            raise InputError(f"out-of-fold prediction of {case} has shape {pv.shape}, its label {rv.shape}",
                             path=p, code="shape")
        preds.append(np.asarray(pv.array))
        refs.append(np.asarray(rv.array))
        spacings.append(tuple(rv.spacing_mm))
    labels = [int(k) for k in labels]
    rules = choose_postprocess(preds, refs, spacings, candidate_rules(refs, spacings, labels), labels=labels)
    after = [apply_postprocess(p, sp, rules) for p, sp in zip(preds, spacings)] if rules else preds
    result = {"postprocess": {str(k): ops for k, ops in rules.items()},     # JSON-style keys, as in bundle.yaml
              "oof": {"cases": len(pairs), "dice": per_label_dice(preds, refs, labels),
                      "dice_postprocessed": per_label_dice(after, refs, labels)}}
    log.info("out-of-fold Dice over %d cases %s; post-processing %s -> %s", len(pairs), result["oof"]["dice"],
             rules or "none", result["oof"]["dice_postprocessed"])
    return result


def _mean_label_dice(preds, refs, labels) -> tuple[dict[int, float], float]:
    d = per_label_dice(preds, refs, labels)
    return d, round(float(np.mean(list(d.values()))) if d else 1.0, 6)


def _oof_probabilities(pred_path: Path) -> np.ndarray:
    npz = pred_path.with_name(pred_path.name[: -len(".nii.gz")] + ".npz")
    if not npz.is_file():
        raise InputError("out-of-fold probabilities are missing; delete this fold's oof/ folder and rerun "
                         "medseg train with the same --fold to write them",
                         path=npz, code="missing")
    with np.load(npz, allow_pickle=False) as z:
        return z["probabilities"].astype(np.float32)


def find_best_configuration(runs: dict[str, str | Path], folds: Sequence[int]) -> dict[str, Any]:
    """Choose between trained configurations and their pairwise ensembles on out-of-fold Dice
    (nnU-Net's find-best-configuration).

    ``runs`` maps a name (e.g. ``3d_fullres``) to its ``--fold all`` run folder; all runs must
    hold out the same cases. Each candidate - every run alone, and every pair with the mean of
    the two runs' out-of-fold probabilities - is scored by the mean over labels of the per-label
    mean Dice over all cases, before post-processing. Returns ``{"labels", "cases", "ranking":
    [{"members", "dice", "mean_dice"}, ...] best first, "best": members}``.
    """
    from itertools import combinations

    from medseg.bundle import read_meta
    from medseg.io import read_volume

    if not runs:
        raise InputError("find-best needs at least one trained configuration", code="missing")
    names = list(runs)
    pairs = {n: {c: p for c, p, _ in oof_pairs(runs[n], folds)} for n in names}
    refs_files = {c: r for c, _, r in oof_pairs(runs[names[0]], folds)}
    for n in names[1:]:
        if set(pairs[n]) != set(refs_files):
            raise InputError(f"{n} holds out other cases than {names[0]}: the configurations were not trained on "
                             "the same folds of the same data set", path=runs[n], code="mismatch")
    labels = sorted(int(k) for k in (read_meta(Path(runs[names[0]]) / f"fold_{folds[0]}").get("labels") or {})
                    if int(k) > 0)
    cases = sorted(refs_files)
    refs = [np.asarray(read_volume(refs_files[c], is_label=True).array) for c in cases]
    candidates: list[tuple[str, ...]] = [(n,) for n in names] + list(combinations(names, 2))
    ranking = []
    for members in candidates:
        preds = []
        for c, ref in zip(cases, refs):
            if len(members) == 1:
                preds.append(np.asarray(read_volume(pairs[members[0]][c], is_label=True).array))
                continue
            probs = [_oof_probabilities(pairs[m][c]) for m in members]
            if len({p.shape for p in probs}) != 1 or probs[0].shape[1:] != ref.shape:
                raise InputError(f"out-of-fold probabilities of {c} differ in shape between {', '.join(members)}",
                                 path=pairs[members[0]][c], code="shape")
            preds.append(np.argmax(np.mean(probs, axis=0), axis=0))
        dice, mean = _mean_label_dice(preds, refs, labels)
        ranking.append({"members": list(members), "dice": dice, "mean_dice": mean})
        log.info("find-best %s: out-of-fold Dice %s (mean %.4f)", " + ".join(members), dice, mean)
    ranking.sort(key=lambda r: (-r["mean_dice"], len(r["members"])))   # a tie goes to the simpler candidate
    return {"labels": labels, "cases": len(cases), "ranking": ranking, "best": ranking[0]["members"]}
