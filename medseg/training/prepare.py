"""From a data set folder to preprocessed cases in RAM: scan, check, split, plan, preprocess.

Everything that can be wrong with the data is found here, before the first training step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.io.dataset import DatasetInfo, scan_dataset
from medseg.preprocess.plan import apply_plan_arrays
from medseg.training.dataset import load_cases, train_val_split
from medseg.training.plan import make_plan
from medseg.training.sampling import TrainCase

log = logging.getLogger("medseg.training")


@dataclass
class PreparedData:
    info: DatasetInfo
    plan: dict[str, Any]
    train: list[TrainCase]
    val: list[TrainCase]
    input_guard: dict[str, Any] | None = None   # what the bundle's predictor checks new cases against

    @property
    def labels(self) -> dict[int, str]:
        return self.info.labels


def prepare_data(cfg: dict[str, Any]) -> PreparedData:
    """Load, check, split and preprocess the data set named by ``cfg['data']`` with ``cfg['plan']``."""
    d = cfg["data"]
    if not d["cache"]:
        raise ConfigError("data.cache: false is not supported yet (the trainer keeps the preprocessed data set in "
                          "RAM); set data.cache: true")
    t0 = time.perf_counter()
    info = scan_dataset(d["root"])
    if d["labels"]:
        info.labels = {0: "background", **{int(k): str(v) for k, v in d["labels"].items()}}
        info.labels = dict(sorted(info.labels.items()))
    ids = [c.case for c in info.cases]
    if d["max_cases"] is not None:
        if not isinstance(d["max_cases"], int) or d["max_cases"] < 2:
            raise ConfigError(f"data.max_cases must be an integer >= 2, got {d['max_cases']!r}")
        ids = ids[: d["max_cases"]]
        info.cases = [c for c in info.cases if c.case in set(ids)]
    train_ids, val_ids = train_val_split(ids, fold=d["fold"], num_folds=d["num_folds"], seed=d["seed"])
    raw = load_cases(info, ids)
    plan = make_plan({k: raw[k] for k in train_ids}, cfg["plan"])
    num_classes = info.num_classes

    def build(cid: str) -> TrainCase:
        rc = raw[cid]
        pre = apply_plan_arrays(rc.image, plan, spacing_mm=rc.spacing_mm, label=rc.label)
        return TrainCase(cid, pre.image, np.ascontiguousarray(pre.label, dtype=np.uint8), num_classes=num_classes)

    input_guard = _input_guard(info, [raw[c] for c in train_ids])
    train = [build(c) for c in train_ids]
    val = [build(c) for c in val_ids]
    if not any(c.fg for c in train):
        raise InputError("no training case holds any foreground label", path=info.root, code="no_foreground")
    mb = sum(c.image.nbytes + c.label.nbytes for c in train + val) / 2 ** 20
    log.info("data: %d training + %d validation cases, %d channel(s), labels %s, %.1f MB in RAM (%.1f s)",
             len(train), len(val), info.channels, info.labels, mb, time.perf_counter() - t0)
    return PreparedData(info, plan, train, val, input_guard)


def _input_guard(info: DatasetInfo, cases: list) -> dict[str, Any]:
    """The bundle's ``input_guard`` (:mod:`medseg.preprocess.guard`) from the raw training cases (channel 0);
    the modality from dataset.json, else ``CT`` when the first case looks like CT, else ``other``."""
    from medseg.preprocess.guard import input_guard, looks_like_ct
    from medseg.training.plan_dataset import modalities_of

    guess = "CT" if cases and looks_like_ct(cases[0].image[0].ravel()[::97]) else "other"
    modality = modalities_of(info.meta or {}, info.channels, guess)[0]
    return input_guard(((c.image[0], c.spacing_mm, c.label) for c in cases), modality)
