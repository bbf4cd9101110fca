"""Run per-case functions on a Ray cluster with Ray Data (imported only for ``--executor ray``).

Cases stream through a Ray Data pipeline, one case per block::

    read (CPU tasks) -> model (actor pool: one model load per actor, 1 GPU each when the
    cluster has GPUs) -> write (CPU tasks) -> driver (manifest, checksums, progress)

Every stage catches the case's own exception and passes it on as data (``{"code", "message"}``,
exactly what the local executor records), so a bad case never fails the dataset. Tasks lost to a
crashed worker or node are retried (``max_retries``; actors are restarted, ``max_restarts``).
Payloads (volumes, predictions) travel between stages as opaque Python objects that Ray
serialises between its own workers; medseg never unpickles anything, and nothing read from disk
is unpickled.

Outputs are written by the write tasks straight into the output folder, through the same writers
(atomic temp file + rename) as locally, so on a multi-node cluster the output folder must be on a
file system every node mounts at the same path (and the inputs too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medseg.executors import ExecutorSpec, RemoteStages, error_of, require_ray

log = logging.getLogger("medseg.ray")


def connect(spec: ExecutorSpec) -> bool:
    """Join ``spec.address`` (or start a one-machine cluster). Returns True when this call started Ray."""
    ray = require_ray()
    if ray.is_initialized():
        _quiet_data()
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    if spec.address:
        kwargs["address"] = spec.address
    else:  # a private cluster: its workers import the same medseg as this process
        root = str(Path(__file__).resolve().parent.parent)  # the folder holding this medseg/
        pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": pp}}
    ray.init(**kwargs)
    _quiet_data()
    return True


def _quiet_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for name in ("ray.data._internal.tensor_extensions.arrow", "ray.data._internal.progress"):
        lg = logging.getLogger(name)  # filters act on the logger a record is made on
        if not any(isinstance(f, _ExpectedNotices) for f in lg.filters):
            lg.addFilter(_ExpectedNotices())


class _ExpectedNotices(logging.Filter):
    """Drops Ray Data notices about what medseg does on purpose (payloads as Python objects, no bars)."""

    EXPECTED = ("falling back to serialize as pickled python objects", "Progress bars disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(e in msg for e in self.EXPECTED)


def disconnect(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


class _Box:
    """An opaque holder for a row's payload (volumes, predictions, error dicts), so Ray Data keeps it as
    one Python object column (Ray serialises it between its workers) instead of converting it to Arrow
    types; medseg itself never unpickles anything."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None):
        self.value = value


# --- stages (module level so that they pickle by reference) -------------------------------------------

def _row(row: dict, payload: Any, err: dict | None) -> dict:
    return {"i": row["i"], "cid": row["cid"], "p": _Box(payload), "err": _Box(err)}


def _read_row(row: dict, load: Callable[[Any], Any] | None) -> dict:
    err, data = row["err"].value, None
    if err is None:
        try:
            inp = row["p"].value
            data = load(inp) if load is not None else inp
        except Exception as exc:  # noqa: BLE001 - the case fails, not the dataset
            err = error_of(exc)
    return _row(row, data, err)


class _ComputeActor:
    """Holds one compute function (one model) for its whole life."""

    def __init__(self, factory: Callable[[], Callable[[str, Any], Any]]):
        self.compute = factory()

    def __call__(self, row: dict) -> dict:
        err, result = row["err"].value, None
        if err is None:
            try:
                result = self.compute(row["cid"], row["p"].value)
            except Exception as exc:  # noqa: BLE001
                err = error_of(exc)
        return _row(row, result, err)


def _write_row(row: dict, write: Callable[[str, Any, Path], Any], out_dir: str) -> dict:
    err, paths = row["err"].value, None
    if err is None:
        try:
            paths = write(row["cid"], row["p"].value, Path(out_dir))
        except Exception as exc:  # noqa: BLE001
            err = error_of(exc)
    return _row(row, paths, err)


def _map_row(row: dict, fn: Callable[[Any], Any]) -> dict:
    return _row(row, fn(row["p"].value), None)


# --- pipelines -----------------------------------------------------------------------------------------

def _dataset(items: list[tuple[str, Any]]):
    import ray.data

    rows = [{"i": i, "cid": str(cid), "p": _Box(inp), "err": _Box(None)} for i, (cid, inp) in enumerate(items)]
    return ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))


@contextlib.contextmanager
def _bounded_retries():
    """Ray Data retries lost tasks and restarts actors without limit by default, so a case that kills
    its worker every time (out of memory, a crashing library) would loop forever; medseg bounds them
    with the ``max_retries``/``max_restarts`` remote args. Ray 2.60 marks passing those to ``map`` as
    deprecated (removal announced for 2.64) without a replacement yet: its warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        yield


def _actor_resources(spec: ExecutorSpec, gpu: bool) -> tuple[int, dict[str, Any]]:
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if gpu else 0
    n = spec.actors or max(1, gpus)
    res: dict[str, Any] = {"num_cpus": 1}
    if gpus:
        res["num_gpus"] = 1
    return n, res


def stream_cases(todo: list[tuple[str, Any]], *, stages: RemoteStages, out_dir: Path,
                 spec: ExecutorSpec) -> Iterator[tuple[str, Any, dict[str, str] | None]]:
    """Run read -> compute -> write for ``todo`` on Ray; yield ``(case_id, what write returned, error)``
    as cases finish (in any order)."""
    import ray.data

    started = connect(spec)
    try:
        n_actors, res = _actor_resources(spec, stages.gpu)
        log.info("ray: %d cases, %d model actor(s) %s", len(todo), n_actors, res)
        retry = {"max_retries": spec.max_retries}
        ds = _dataset(todo)
        with _bounded_retries():
            ds = ds.map(_read_row, fn_kwargs={"load": stages.load}, num_cpus=1, **retry)
            ds = ds.map(_ComputeActor, fn_constructor_kwargs={"factory": stages.compute_factory},
                        compute=ray.data.ActorPoolStrategy(size=n_actors), max_restarts=spec.max_retries,
                        max_task_retries=spec.max_retries, **res)
            ds = ds.map(_write_row, fn_kwargs={"write": stages.write, "out_dir": str(out_dir)}, num_cpus=1, **retry)
        for row in ds.iter_rows():
            err = row["err"].value
            yield row["cid"], (None if err is not None else row["p"].value), err
    finally:
        disconnect(started)


def map_unordered(fn: Callable[[Any], Any], items: list[Any], *, spec: ExecutorSpec) -> Iterator[tuple[int, Any]]:
    """``(index, fn(item))`` for every item, computed in Ray CPU tasks, yielded as they finish.

    ``fn`` must catch the errors of its item itself (as :func:`medseg.metrics.cohort._score_one`
    does): an exception escaping ``fn`` fails the run.
    """
    started = connect(spec)
    try:
        ds = _dataset([(str(i), it) for i, it in enumerate(items)])
        with _bounded_retries():
            ds = ds.map(_map_row, fn_kwargs={"fn": fn}, num_cpus=1, max_retries=spec.max_retries)
        for row in ds.iter_rows():
            yield int(row["i"]), row["p"].value
    finally:
        disconnect(started)
