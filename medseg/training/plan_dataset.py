"""``medseg plan`` on a data-set folder: check every case, fingerprint each channel, plan.

Scanning and checking reuse the training data set code (:mod:`medseg.io.dataset` finds the cases,
:mod:`medseg.training.dataset` reads and checks them), so a data set that plans also trains; the planning
rules are in :mod:`medseg.preprocess.planner`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError

log = logging.getLogger("medseg.plan")


def modalities_of(meta: dict[str, Any], channels: int, guess: str) -> list[str]:
    """Channel modalities from dataset.json (MSD ``modality`` or nnU-Net v2 ``channel_names``), else the
    fingerprint's guess (``CT`` or ``other``) for every channel."""
    raw = meta.get("channel_names") or meta.get("modality")
    if isinstance(raw, dict) and raw:
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise InputError(f"dataset.json channel names {raw!r} must map channel indices to names",
                             code="bad_dataset_json") from None
        if sorted(names) != list(range(channels)):
            raise InputError(f"dataset.json names channels {sorted(names)} but the images have {channels}",
                             code="channels")
        return [names[k] for k in range(channels)]
    return [guess] * channels


def check_cases(info) -> None:
    """Read every case with the training checks; one InputError listing every bad case."""
    from medseg.training.dataset import load_case

    allowed = set(info.labels) if info.labels else None
    bad = []
    for cf in info.cases:
        try:
            load_case(cf, allowed_labels=allowed)
        except MedsegError as exc:
            bad.append(f"{cf.case}: {exc}")
    if bad:
        # one line: error messages escape newlines (a file name must not forge a log line)
        raise InputError(f"{len(bad)} bad case(s), nothing planned: " + "; ".join(bad), path=info.root,
                         code="bad_cases")


def plan_dataset(root: str | Path, *, device: str = "cpu", memory_gb: float | None = None,
                 gflop_per_iteration: float | None = None, samples_per_case: int = 10_000,
                 label_names: dict[int, str] | None = None) -> dict[str, Any]:
    """The plan (a YAML-safe dict) for the data set at ``root``; raises InputError on any bad case.
    ``label_names`` renames labels of the data set (a label it does not have is an error)."""
    from medseg.io.dataset import scan_dataset
    from medseg.preprocess.fingerprint import fingerprint
    from medseg.preprocess.planner import plan_experiment

    t0 = time.perf_counter()
    root = Path(root)
    info = scan_dataset(root)
    check_cases(info)
    labels_paths = [c.label for c in info.cases]
    fps = []
    for ch in range(info.channels):
        fp = fingerprint([c.images[ch] for c in info.cases], labels_paths, samples_per_case=samples_per_case)
        if fp["failed"]:
            raise InputError(f"cases failed the fingerprint: {fp['failed']}", path=root, code="bad_cases")
        fps.append(fp)
    labels = info.labels or {i: ("background" if i == 0 else f"label_{i}")
                             for i in range(max(fps[0]["labels"] or [1]) + 1)}
    for k, v in (label_names or {}).items():
        if int(k) == 0 or int(k) not in labels:
            raise InputError(f"--label-names names label {k}, which the data set does not have (labels: "
                             f"{', '.join(str(x) for x in labels if x)})", path=root, code="bad_labels")
        labels[int(k)] = str(v)
    mods = modalities_of(info.meta, info.channels, fps[0]["modality_guess"])
    plan = plan_experiment(fps[0], modalities=mods, labels=labels, device=device, memory_gb=memory_gb,
                           gflop_per_iteration=gflop_per_iteration, channel_fps=fps)
    name = dataset_name(root, info.meta)
    plan = {"format": plan.pop("format"),
            "dataset": {"root": str(root), "name": name, "n_cases": len(info.cases), "channels": info.channels},
            **plan,
            "fingerprint": [{k: v for k, v in fp.items() if k not in ("cases", "failed")} for fp in fps]}
    log.info("planned %s (%d cases) in %.1f s", name, len(info.cases), time.perf_counter() - t0)
    return plan


def dataset_name(root: str | Path, meta: dict | None = None) -> str:
    """The data set's name: ``name`` in dataset.json, else the folder's name."""
    from medseg.io.dataset import read_dataset_json

    root = Path(root)
    meta = read_dataset_json(root) if meta is None else meta
    return str((meta or {}).get("name") or root.resolve().name)
