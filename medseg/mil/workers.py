"""Worker processes of the split MIL trainer (:func:`medseg.mil.folds.fit_jobs`): the process, and the
task and result it exchanges with its parent through pipes, as ``.npz`` archives (loaded with
``allow_pickle=False``) whose non-array parts are one JSON document: no pickle either way.

A worker is ``python -c "from medseg.mil.folds import worker_main; worker_main()"``, not a
``multiprocessing`` child, which would re-run the caller's main script.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.mil.bags import Bags
from medseg.mil.fit import MILEnsemble, MILTrainConfig, ensemble_from_tensors, ensemble_tensors


@dataclass
class Job:
    """One network set to train on the bags ``train`` (indices into the data set) with ``seed`` and
    ``cfg``; ``marks`` are the epoch counts to snapshot (default ``[cfg.epochs]``)."""

    train: np.ndarray
    seed: int
    cfg: Any
    marks: tuple[int, ...] = ()

    def epochs(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.marks))) if self.marks else (int(self.cfg.epochs),)


_META = "meta.json"


def _pack(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    named = {**arrays, _META: np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    np.savez(buf, **named)  # type: ignore[arg-type]
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays.pop(_META).tobytes().decode())


def encode_task(bags: Bags, jobs: list[Job], device: str, part: tuple[int, int]) -> bytes:
    """The bags (features, labels, ids), the jobs (training bags, seed, configuration, snapshot epochs),
    the device and the part of the jobs to train."""
    lens = np.array([len(f) for f in bags.features], np.int64)
    arrays = {"feats": np.concatenate(bags.features, 0), "lens": lens, "labels": np.asarray(bags.labels)}
    arrays.update({f"train{k}": np.asarray(j.train) for k, j in enumerate(jobs)})
    meta = {"ids": list(bags.ids), "device": device, "part": list(part),
            "jobs": [{"seed": int(j.seed), "cfg": asdict(j.cfg), "marks": list(j.marks)} for j in jobs]}
    return _pack(arrays, meta)


def decode_task(data: bytes) -> tuple[Bags, list[Job], str, tuple[int, int]]:
    arrays, meta = _unpack(data)
    feats = np.split(arrays["feats"], np.cumsum(arrays["lens"])[:-1])
    bags = Bags(list(feats), arrays["labels"], list(meta["ids"]))
    jobs = [Job(arrays[f"train{k}"], j["seed"], MILTrainConfig.from_dict(j["cfg"]), tuple(j["marks"]))
            for k, j in enumerate(meta["jobs"])]
    return bags, jobs, meta["device"], (int(meta["part"][0]), int(meta["part"][1]))


def encode_result(result: list[dict[int, MILEnsemble]]) -> bytes:
    """Per job, its snapshot ensembles by epoch (:func:`~medseg.mil.fit.ensemble_tensors`) and loss history."""
    arrays: dict[str, np.ndarray] = {}
    snaps = []
    for j, by_epoch in enumerate(result):
        for e, ens in by_epoch.items():
            tensors, meta = ensemble_tensors(ens)
            arrays.update({f"{j}|{e}|{k}": v.numpy() for k, v in tensors.items()})
            snaps.append({"job": j, "epoch": int(e), "meta": meta, "history": [float(h) for h in ens.history]})
    return _pack(arrays, {"jobs": len(result), "snaps": snaps})


def decode_result(data: bytes) -> list[dict[int, MILEnsemble]]:
    arrays, meta = _unpack(data)
    by_snap: dict[str, dict[str, torch.Tensor]] = {}
    for name, v in arrays.items():
        job, epoch, key = name.split("|", 2)
        by_snap.setdefault(f"{job}|{epoch}", {})[key] = torch.from_numpy(v)
    out: list[dict[int, MILEnsemble]] = [{} for _ in range(meta["jobs"])]
    for s in meta["snaps"]:
        ens = ensemble_from_tensors(by_snap[f"{s['job']}|{s['epoch']}"], s["meta"])
        out[s["job"]][s["epoch"]] = replace(ens, history=list(s["history"]))
    return out


class Worker:
    """One worker process training ``part`` of a task (:func:`encode_task`); :meth:`result` waits for it."""

    def __init__(self, task: bytes, part: tuple[int, int]):
        import medseg

        self.part = part
        self.err = tempfile.TemporaryFile()
        home = str(Path(medseg.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([home, *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.proc = subprocess.Popen([sys.executable, "-c", "from medseg.mil.folds import worker_main; worker_main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        self._feed = threading.Thread(target=self._write, args=(task,), daemon=True)
        self._feed.start()

    def _write(self, task: bytes) -> None:
        try:
            with self.proc.stdin:            # type: ignore[union-attr]
                self.proc.stdin.write(task)   # type: ignore[union-attr]
        except OSError:
            pass          # the worker died: result() reports it

    def result(self) -> list[dict[int, MILEnsemble]] | str:
        """The part's snapshots, or a string saying why there are none."""
        data = self.proc.stdout.read()   # type: ignore[union-attr]
        code = self.proc.wait()
        if code == 0 and data:
            try:
                return decode_result(data)
            except Exception as exc:  # noqa: BLE001 - a worker that died mid-write
                return f"unreadable result ({type(exc).__name__})"
        self.err.seek(0)
        tail = self.err.read().decode(errors="replace").strip().splitlines()[-1:]
        return f"exit {code}: {tail[0] if tail else 'no message'}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
