"""Cohort runs: one manifest, atomic outputs, resume, retry of failed cases, I/O overlapping compute.

>>> report = run_batch(cases, out_dir="preds", load=read_case, compute=segment,  # doctest: +SKIP
...                    write=save_outputs, params={"model": "unet-fold0", "tta": True})

Each case flows through three stages: ``load(input)`` in a prefetch thread (reading the next
cases while the current one computes), ``compute(case_id, data)`` in the calling thread, and
``write(case_id, result, out_dir)`` in a writer thread, with bounded queues between them. The
writer also owns the manifest (``out_dir/manifest.json``), rewritten atomically after every case
with the case's status, its output files and their SHA-256, and a hash of ``params``.

Re-running the same command resumes: a case is skipped only if the manifest says it is done with
the same params hash and every recorded output still exists with the recorded checksum; anything
else (failed, missing, truncated, changed params) is done again. Outputs must be written with
:func:`medseg.fsutil.atomic_path`, so a run killed at any moment leaves earlier outputs intact;
stale temporary files of a killed run are removed when the next run starts. With deterministic
``compute`` and ``write`` an interrupted and re-run batch gives byte-identical outputs, and the
manifest holds no timestamps, so it is identical too. Two runs cannot write to one folder at
the same time: the output folder's lock (:func:`medseg.fsutil.output_lock`, shared with every verb
that writes a folder) makes the second one fail with code ``busy``.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError
from medseg.executors import as_spec, error_of
from medseg.fsutil import LOCK, output_lock
from medseg.manifest import (
    FORMAT,
    MANIFEST,
    CaseOutcome,
    Recorder,
    is_complete,
    params_hash,
    read_manifest,
    save_manifest,
    sha256_file,
)

# the manifest helpers are re-exported: callers of the batch API import them from here
__all__ = ["run_batch", "BatchReport", "CaseOutcome", "MANIFEST", "LOCK", "FORMAT", "params_hash", "sha256_file",
           "read_manifest", "is_complete"]

log = logging.getLogger(__name__)

# Names fsutil.atomic_path gives its temporary files: ".<final name>.<8 random chars>.tmp<suffix>".
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
_END = object()


@dataclass
class BatchReport:
    outcomes: list[CaseOutcome]
    manifest_path: Path
    timings: Any = None  # set by callers that time their cases (medseg.inference.cohort)
    record: dict[str, Any] | None = None  # what the run recorded besides its cases (e.g. the bundle used)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_batch(
    cases: Sequence[tuple[str, Any]],
    *,
    out_dir: str | os.PathLike,
    compute: Callable[[str, Any], Any],
    write: Callable[[str, Any, Path], Iterable[str | os.PathLike]],
    load: Callable[[Any], Any] | None = None,
    params: Any = None,
    prefetch: int = 2,
    write_queue: int = 2,
    executor: Any = None,
    remote: Any = None,
    on_result: Callable[[str], None] | None = None,
    on_finished: Callable[[CaseOutcome], None] | None = None,
    record: dict[str, Any] | None = None,
) -> BatchReport:
    """Run ``load -> compute -> write`` over ``cases``, resuming from and recording in the manifest.

    Parameters
    ----------
    cases : sequence of (case_id, input)
        Unique case ids; ``input`` is whatever ``load`` takes (e.g. a path).
    out_dir : path
        Output folder; holds the manifest and (by convention) everything ``write`` writes.
    compute : callable
        ``compute(case_id, data) -> result``; runs in the calling thread (the model's work).
    write : callable
        ``write(case_id, result, out_dir) -> paths written``; must write through
        :func:`medseg.fsutil.atomic_path` and only inside ``out_dir``. Runs in the writer thread.
    load : callable, optional
        ``load(input) -> data``, run ahead in the prefetch thread; identity by default.
    params : JSON-like
        Everything that determines the outputs (model, settings); cases done with other params
        are done again.
    prefetch, write_queue : int
        Queue bounds: cases loaded ahead, results waiting to be written.
    executor : :class:`medseg.executors.ExecutorSpec` or "local"/"ray", optional
        Where the cases run (default local). On Ray, ``remote`` (a
        :class:`medseg.executors.RemoteStages` holding picklable versions of ``load``, ``compute``
        and ``write``) runs on the cluster; the manifest, checksums and resume stay here.
    on_result : callable, optional
        ``on_result(case_id)`` in this process after each case is recorded on Ray (progress).
    on_finished : callable, optional
        ``on_finished(outcome)``, called in the writer thread once a case's outcome is in the
        saved manifest (e.g. to time the recording); its exceptions are logged and ignored.
    record : dict, optional
        Top-level entries written into the manifest as they are, not hashed into ``params`` (e.g.
        ``{"bundle": {"path", "sha256"}}``: where the model came from, which a moved copy changes).

    Returns
    -------
    BatchReport
        One :class:`CaseOutcome` per case, in input order. A case that fails in any stage is
        recorded as ``failed`` with ``error = {"code", "message"}`` and the others go on; only
        failures of the manifest itself stop the run.
    """
    out = Path(out_dir).absolute()  # write() gets, and returns, paths that do not depend on the cwd
    ids = [str(c[0]) for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"batch case ids must be unique; repeated: {dup[:5]}")
    phash = params_hash(params)
    with output_lock(out):
        manifest = read_manifest(out)
        _remove_stale_tmp(out, manifest)
        reserved = {"format", "params_hash", "params", "cases"} & set(record or {})
        if reserved:
            raise ConfigError(f"batch record may not replace manifest keys {sorted(reserved)}", code="bad_params")
        manifest.update(record or {})
        manifest.update(format=FORMAT, params_hash=phash, params=params)
        outcomes: dict[str, CaseOutcome] = {}
        todo = []
        all_ids = set(ids)
        for cid, inp in zip(ids, (c[1] for c in cases)):
            entry = manifest["cases"].get(cid)
            if is_complete(entry, out, phash, case_id=cid, case_ids=all_ids):
                outcomes[cid] = CaseOutcome(cid, "skipped", dict(entry["outputs"]))
            else:
                todo.append((cid, inp))
        log.info("batch: %d cases, %d already done, %d to run", len(ids), len(ids) - len(todo), len(todo))
        spec = as_spec(executor)
        if todo and not spec.is_local:
            if remote is None:
                raise ConfigError("this batch cannot run on Ray (no remote stages given)", code="bad_params")
            from medseg.ray_runner import stream_cases

            rec = Recorder(out, manifest, phash, outcomes)
            for cid, paths, err in stream_cases(todo, stages=remote, out_dir=out, spec=spec):
                rec.record(cid, paths, err)
                if on_result is not None:
                    on_result(cid)
        elif todo:
            _Pipeline(todo, out, manifest, phash, compute, write, load, prefetch, write_queue, outcomes,
                      on_finished).run()
        else:
            save_manifest(out, manifest)
    return BatchReport([outcomes[i] for i in ids if i in outcomes], out / MANIFEST, record=record)


class _Pipeline:
    def __init__(self, todo, out, manifest, phash, compute, write, load, prefetch, write_queue, outcomes,
                 on_finished=None):
        self.todo, self.out, self.manifest, self.phash = todo, out, manifest, phash
        self.recorder = Recorder(out, manifest, phash, outcomes, on_finished)
        self.compute, self.write, self.load = compute, write, load or (lambda x: x)
        self.load_q: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self.write_q: queue.Queue = queue.Queue(maxsize=max(write_queue, 1))
        self.stop = threading.Event()
        self.writer_error: BaseException | None = None
        self.outcomes = outcomes

    def run(self) -> None:
        loader = threading.Thread(target=self._loader, name="medseg-batch-prefetch", daemon=True)
        writer = threading.Thread(target=self._writer, name="medseg-batch-writer", daemon=True)
        loader.start()
        writer.start()
        try:
            while True:
                item = self._get(self.load_q, loader)
                if item is _END:
                    break
                cid, data, exc = item
                result = None
                if exc is None:
                    try:
                        result = self.compute(cid, data)
                    except Exception as e:  # a bad case must not stop the others
                        exc = e
                del data
                self._put(self.write_q, (cid, result, exc))
        finally:
            self.stop.set()  # the loader stops; the writer finishes what is queued
            while writer.is_alive():
                try:
                    self.write_q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue
            writer.join()
            loader.join()
        if self.writer_error is not None:
            raise self.writer_error

    def _get(self, q: queue.Queue, loader: threading.Thread):
        while True:
            if self.writer_error is not None:
                raise self.writer_error
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if not loader.is_alive() and q.empty():
                    raise MedsegError("batch: the prefetch thread stopped unexpectedly",
                                      code="prefetch_died") from None

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.writer_error is not None:
                raise self.writer_error
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loader(self) -> None:
        for cid, inp in self.todo:
            if self.stop.is_set():
                return
            item: tuple[str, Any, Exception | None]
            try:
                item = (cid, self.load(inp), None)
            except Exception as e:
                item = (cid, None, e)
            if not self._put_quiet(item):
                return
        self._put_quiet(_END)

    def _put_quiet(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.load_q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _writer(self) -> None:
        try:
            while True:
                item = self.write_q.get()
                if item is _END:
                    return
                self._finish(*item)
        except BaseException as e:  # manifest could not be written: stop the run
            self.writer_error = e
            self.stop.set()

    def _finish(self, cid: str, result, exc: BaseException | None) -> None:
        paths = None
        if exc is None:
            try:
                paths = self.write(cid, result, self.out)
                _remove_tmp_beside(paths, self.out)
            except Exception as e:
                exc = e
        if exc is not None:
            log.debug("batch: case %s traceback", cid, exc_info=exc)
        self.recorder.record(cid, paths, error_of(exc) if exc is not None else None)


def _remove_tmp_beside(paths, out: Path) -> None:
    """After a case is written: temporary files of *its* outputs (``.<name>.<8 chars>.tmp...``) that a
    killed earlier run left beside them, in subfolders too (the case had no manifest entry then)."""
    from medseg.fsutil import remove_stale_tmp

    root = out.resolve()
    for p in paths or ():
        q = Path(p).resolve()
        if root in q.parents:
            remove_stale_tmp(q)


def _remove_stale_tmp(out: Path, manifest: dict) -> None:
    """Remove temporary files an interrupted run left: at the top level of ``out`` (where medseg's
    writers put their outputs) and beside the outputs the manifest records; nothing else, and never
    a symlink or a folder."""
    from medseg.fsutil import remove_stale_tmp

    n = 0
    for entry in os.scandir(out):
        if _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            n += 1
    root = out.resolve()
    for cid_entry in manifest.get("cases", {}).values():
        outputs = cid_entry.get("outputs") if isinstance(cid_entry, dict) else None
        for rel in outputs if isinstance(outputs, dict) else ():
            p = (out / str(rel)).resolve()
            if p.parent != root and root in p.parents:
                n += len(remove_stale_tmp(p))
    if n:
        log.info("batch: removed %d temporary file(s) left by an interrupted run in %s", n, out)
