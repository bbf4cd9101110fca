"""Predict a whole folder of cases with a :class:`~medseg.inference.predictor.Predictor`, resumably.

Built on :func:`medseg.batch.run_batch`: the next cases are read in a prefetch thread and finished
ones written in a writer thread while the model works; every output is written to a temporary
file, flushed and renamed into place, then recorded with its SHA-256 in ``OUT/manifest.json``.
Re-running the same command skips only cases whose outputs still match the manifest (same model
weights and settings); failed cases are marked in the manifest and retried.

Outputs per case ``CASE``::

    OUT/CASE.nii.gz                   label map (uint8) on the input grid (affine and shape of the input)
    OUT/CASE_probabilities.npz        with --save-probabilities: ``probabilities`` (K, z, y, x) float16
                                      (or float32), ``affine`` (4x4, (z, y, x) indices -> RAS mm),
                                      ``labels`` (K,) label values; ``numpy.load`` reads it

With ``outputs`` (:class:`medseg.inference.outputs.CaseOutputs`: ``--output-format``, ``--statistics``,
``--preview``) also ``CASE_statistics.json``, ``CASE_preview.png``, ``CASE.seg.nrrd``, ``CASE_seg.dcm``
and the cohort's ``OUT/statistics.csv``, see :mod:`medseg.inference.outputs`.

``OUT/manifest.json`` also records the model bundle used (``bundle: {path, sha256}``, see
:func:`medseg.bundle.bundle_sha256`). And ``OUT/timings.csv``: seconds per case and phase (read,
preprocess, forward, invert, post-process, write, record) of the latest run, see
:mod:`medseg.inference.timings`; a log, not an output (not in the manifest, different on every run).

Input cases: every volume file or DICOM series folder of the input folder (or the single file),
named by :func:`medseg.fsutil.unique_names` (the names ``medseg evaluate`` gives the same files).
Multi-channel models take nnU-Net-style names ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz`` ...;
for one-channel models a ``_0000`` suffix present on every file is dropped from the case id.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.fsutil import atomic_path, case_id, unique_names

log = logging.getLogger("medseg.inference")

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
PREDICT_FORMAT = "medseg-predict/1"


def find_cases(input_path: str | Path, *, channels: int = 1) -> list[tuple[str, list[Path]]]:
    """``[(case_id, [channel paths])]`` for a file, a DICOM folder or a folder of cases (sorted).

    Raises InputError when the folder holds no volumes, or channel files are missing for a
    multi-channel model.
    """
    from medseg.io import list_cases

    src = Path(input_path)
    paths = list_cases(src)
    if not paths:
        raise InputError("no volumes found (expected .nii/.nii.gz/.nrrd/.mha/.mhd files or DICOM series folders)",
                         path=src, code="empty")
    ids = [case_id(p) for p in paths]
    matches = [_CHANNEL.match(i) for i in ids]
    if channels == 1:
        strip = all(m is not None and m["ch"] == "0000" for m in matches)
        raw = [m["case"] if strip else i for i, m in zip(ids, matches)]  # type: ignore[index]
        return [(name, [p]) for name, p in zip(unique_names(raw), paths)]
    if not all(matches):
        bad = [i for i, m in zip(ids, matches) if m is None][:3]
        raise InputError(f"the model takes {channels} channels: name the files CASE_0000 .. CASE_{channels - 1:04d} "
                         f"(e.g. {', '.join(bad)} has no channel number)", path=src, code="channels")
    groups: dict[str, dict[int, Path]] = {}
    for m, p in zip(matches, paths):
        groups.setdefault(m["case"], {})[int(m["ch"])] = p  # type: ignore[index]
    out = []
    raw = sorted(groups)
    for cid, name in zip(raw, unique_names(raw)):
        # an incomplete case is passed on as is: the predictor then reports it as a failed case
        chans = groups[cid]
        out.append((name, [chans[k] for k in sorted(chans)]))
    return out


class _LoadFailure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def load_channels(paths: list[Path]):
    """Read the channel volumes of one case (``kind="image"``: NaN/Inf refused)."""
    from medseg.io import read_volume

    return [read_volume(p, kind="image") for p in paths]


def write_probabilities(path: str | Path, probs: np.ndarray, *, affine: np.ndarray, labels: list[int],
                        dtype: str = "float16") -> Path:
    """Write a deterministic ``.npz`` (fixed zip timestamps: identical bytes for identical arrays), atomically."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"probability dtype must be float16 or float32, got {dtype!r}")
    arrays = {"probabilities": np.ascontiguousarray(probs, dtype=dtype),
              "affine": np.asarray(affine, dtype=np.float64), "labels": np.asarray(labels, dtype=np.int32)}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=6)
    return Path(path)


def run_params(predictor, *, save_probabilities: bool, probability_dtype: str, outputs=None) -> dict[str, Any]:
    """Everything that determines the outputs (hashed into the manifest): weights and settings, not the device."""
    params = {"format": PREDICT_FORMAT, "model": predictor.identity(), "tta_axes": list(predictor.tta_axes),
              "overlap": predictor.overlap, "batch_size": predictor.batch_size, "blend": predictor.blend,
              "postprocess": predictor.rules or None, "save_probabilities": bool(save_probabilities),
              "probability_dtype": probability_dtype if save_probabilities else None}
    if predictor.tta_axes and getattr(predictor, "tta_mode", "volume") != "volume":
        params["tta_mode"] = predictor.tta_mode   # only when not the default: earlier manifests stay valid
    if outputs is not None and outputs.extra:
        params["outputs"] = outputs.params()      # likewise
    return params


def write_prediction(cid: str, pred, root: Path, *, save_probabilities: bool, label_values: list[int],
                     probability_dtype: str, outputs=None) -> list[Path]:
    """Write one case's outputs (label map, optional probabilities, ``outputs``' extras) atomically;
    returns their paths."""
    from medseg.io import write_volume

    paths = [write_volume(pred.label, root / f"{cid}.nii.gz")]
    if save_probabilities and pred.probabilities is not None:
        paths.append(write_probabilities(root / f"{cid}_probabilities.npz", pred.probabilities,
                                         affine=pred.label.affine, labels=label_values, dtype=probability_dtype))
    if outputs is not None:
        paths += outputs.write(cid, pred, root)
    return paths


def build_predictor(model: str | Path, *, device: str = "auto", weights: str = "best", tta_axes=(),
                    tta_mode: str = "volume", overlap: float = 0.5, batch_size: int = 4, postprocess: bool = True,
                    threads: int | None = None, folds: list[int] | None = None, force: bool = False,
                    backend: str = "auto", prepare: bool = True):
    """Resolve the device, size the CPU threads (``threads``, else :func:`medseg.device.choose_threads`:
    the cores free now) and load the bundle into a :class:`Predictor` whose networks are prepared on
    ``backend`` (:mod:`medseg.inference.backends`) before the first case (``prepare=False``: on first use).
    Also run once per Ray actor. Torch is imported only when a network runs on it (or is converted):
    a bundle whose networks are cached for OpenVINO predicts without it; the predictor sets torch's
    threads when it uses torch."""
    from medseg.device import choose_threads, device_name
    from medseg.inference.predictor import Predictor

    dev = device_name(device)
    n = choose_threads(threads)
    log.debug("CPU threads: %d (%s)", n, "--threads" if threads else "cores free now")
    predictor = Predictor.from_bundle(model, device=dev, weights=weights, tta_axes=tta_axes, tta_mode=tta_mode,
                                      overlap=overlap, batch_size=batch_size, postprocess=postprocess, threads=n,
                                      folds=folds, force=force, backend=backend)
    if prepare:
        predictor.runners()  # convert / load the cached networks now, not inside the first case's timings
    return predictor


def _predict_fn(factory: Callable[[], Any], save_probabilities: bool) -> Callable[[str, Any], Any]:
    """On a Ray actor: load the model once, return the per-case compute function."""
    predictor = factory()
    return partial(_predict_case, predictor, save_probabilities)


def _predict_case(predictor, save_probabilities: bool, cid: str, vols):
    return predictor.predict_volume(vols, probabilities=save_probabilities)


class _CaseSteps:
    """The per-case steps of a :func:`predict_folder` run (read, predict, write, record, progress), each
    timed on one :class:`~medseg.inference.timings.RunClock`; locally they run in the reader, model and
    writer threads of :func:`medseg.batch.run_batch`. On Ray only :attr:`write` (picklable) travels and
    :meth:`case_done` reports progress."""

    def __init__(self, predictor, clock, *, save_probabilities: bool, probability_dtype: str, bar=None,
                 on_case: Callable[[str], None] | None = None, windows: bool = False, todo: int = 0,
                 outputs=None):
        self.predictor, self.clock, self.save_probabilities = predictor, clock, save_probabilities
        self.bar, self.on_case = bar, on_case
        # windows: the bar counts the sliding windows of the case in the model (with the time left), its
        # description the cases; otherwise (Ray) it counts cases
        self.windows = windows and bar is not None
        self.todo, self.cases_done, self._wdone = todo, 0, -1
        if self.windows:
            predictor.on_windows = self.window_progress
        self.write = partial(write_prediction, save_probabilities=save_probabilities,
                             label_values=sorted(predictor.labels), probability_dtype=probability_dtype,
                             outputs=outputs)

    def load(self, item: tuple[str, list[Path]]):
        """Read a case's channels; a failure is handed to :meth:`compute`, which raises it (so every
        case passes the progress bar)."""
        cid, paths = item
        t = self.clock.now()
        try:
            data = load_channels(paths)
        except Exception as exc:
            data = _LoadFailure(exc)
        self.clock.set(cid, read_at_s=t, read_s=self.clock.now() - t)
        return data

    def compute(self, cid: str, vols):
        """Predict one case (the model thread)."""
        start = self.clock.compute_started(cid)
        if self.windows:
            self._wdone = -1
            self.bar.set_description(f"predict {cid} (case {self.cases_done + 1}/{self.todo})", refresh=False)
        try:
            if isinstance(vols, _LoadFailure):
                raise vols.exc
            pred = self.predictor.predict_volume(vols, probabilities=self.save_probabilities)
            self.clock.set(cid, **{f"{k}_s": v for k, v in pred.timings.items()})
            return pred
        finally:
            self.clock.compute_ended(cid, start)
            self.case_done(cid)

    def timed_write(self, cid: str, pred, root: Path) -> list[Path]:
        """Write one case's outputs (the writer thread)."""
        t = self.clock.now()
        paths = self.write(cid, pred, root)
        self.clock.set(cid, write_at_s=t, write_s=self.clock.now() - t)
        return paths

    def window_progress(self, done: int, total: int) -> None:
        """The predictor's report of the windows done for the current case (the model thread)."""
        if self._wdone < 0:        # the first batch of windows of this case
            self.bar.reset(total=total)
            self._wdone = 0
        self.bar.update(done - self._wdone)
        self._wdone = done

    def case_done(self, cid: str) -> None:
        """Progress: the bar and the ``on_case`` hook (after compute; on Ray, when a result comes back)."""
        self.cases_done += 1
        if self.bar is not None and not self.windows:
            self.bar.set_postfix_str(cid, refresh=False)
            self.bar.update(1)
        if self.on_case is not None:
            self.on_case(cid)

    def finished(self, outcome) -> None:
        """A case is recorded in the manifest: its status, and the recording time after the write."""
        t = self.clock.now()
        written = self.clock.get(outcome.case_id, "write_at_s")
        extra = {}
        if outcome.status == "done" and written is not None:
            extra["record_s"] = t - written - self.clock.get(outcome.case_id, "write_s", 0.0)
        self.clock.set(outcome.case_id, status=outcome.status, done_at_s=t, **extra)


def _cases_to_do(cases: list[tuple[str, list[Path]]], out: Path, params: dict[str, Any]) -> int:
    """How many of ``cases`` the manifest does not hold complete."""
    from medseg.batch import is_complete, params_hash, read_manifest

    man, ph = read_manifest(out), params_hash(params)
    ids = {cid for cid, _ in cases}
    return sum(not is_complete(man["cases"].get(cid), out, ph, case_id=cid, case_ids=ids) for cid, _ in cases)


def _remote_stages(predictor_factory: Callable[[], Any] | None, save_probabilities: bool, write):
    """The read / predict / write steps for Ray actors; the model is loaded once per actor."""
    from medseg.executors import RemoteStages

    if predictor_factory is None:
        from medseg.errors import ConfigError

        raise ConfigError("predicting on Ray needs a predictor_factory (the model is loaded on each actor)",
                          code="bad_params")
    device = str(getattr(predictor_factory, "keywords", {}).get("device", "auto")).lower()
    return RemoteStages(load=load_channels, compute_factory=partial(_predict_fn, predictor_factory, save_probabilities),
                        write=write, gpu=device != "cpu")  # --device cpu: CPU actors even on a GPU cluster


def _finish_timings(clock, out: Path, report) -> None:
    """Write ``out/timings.csv`` (a log: an error only warns) and attach the timings to ``report``."""
    timings = clock.finish()
    if timings.rows:
        try:
            timings.write(out)
        except OSError as exc:  # the timings are a log: never fail a run over them
            log.warning("could not write %s/timings.csv: %s", out, exc)
        log.debug("%s", timings.summary())  # medseg predict prints it; the predict stage logs it
    if report is not None:
        report.timings = timings


def predict_folder(predictor, input_path: str | Path, out_dir: str | Path, *, save_probabilities: bool = False,
                   probability_dtype: str = "float16", progress: bool = False, prefetch: int = 2,
                   on_case: Callable[[str], None] | None = None, executor=None,
                   predictor_factory: Callable[[], Any] | None = None, outputs=None):
    """Predict every case of ``input_path`` into ``out_dir``; see the module doc. Returns a
    :class:`medseg.batch.BatchReport` whose ``timings`` (:class:`medseg.inference.timings.RunTimings`) say
    where the time went; they are also written to ``out_dir/timings.csv`` (local executor only).

    A bad case (unreadable, wrong dimensions or channels...) is recorded as failed in the
    manifest with its error code and message, and the others go on.

    ``executor="ray"`` (or a :class:`medseg.executors.ExecutorSpec`) runs the cases on a Ray cluster:
    ``predictor_factory`` (picklable, e.g. ``functools.partial(build_predictor, ...)``) loads the
    model once per actor; ``predictor`` here gives the run's parameters (manifest hash).
    ``outputs``: a :class:`medseg.inference.outputs.CaseOutputs` (extra formats, statistics, preview).
    """
    from medseg.batch import run_batch
    from medseg.executors import as_spec
    from medseg.inference.timings import RunClock

    clock = RunClock()
    out = Path(out_dir)
    cases = find_cases(input_path, channels=predictor.channels)
    params = run_params(predictor, save_probabilities=save_probabilities, probability_dtype=probability_dtype,
                        outputs=outputs)
    spec = as_spec(executor)
    bar, todo = None, 0
    if progress:
        from medseg.progress import progress_bar

        todo = _cases_to_do(cases, out, params)
        # locally: windows of each case with the time left, cases in the description; on Ray: cases
        bar = progress_bar(todo if not spec.is_local else None, "predict", "case" if not spec.is_local else "windows")
    steps = _CaseSteps(predictor, clock, save_probabilities=save_probabilities, probability_dtype=probability_dtype,
                       bar=bar, on_case=on_case, windows=spec.is_local, todo=todo, outputs=outputs)
    remote = None if spec.is_local else _remote_stages(predictor_factory, save_probabilities, steps.write)
    prov = predictor.provenance() if hasattr(predictor, "provenance") else None
    record: dict[str, Any] | None = {"bundle": prov} if prov else None
    if record is not None and getattr(predictor, "backend", None):
        record["backend"] = predictor.backend
    if prov:
        log.info("model bundle %s (sha256 %s)", prov["path"], prov["sha256"])
    report = None
    try:
        if spec.is_local:
            report = run_batch([(cid, (cid, paths)) for cid, paths in cases], out_dir=out, compute=steps.compute,
                               write=steps.timed_write, load=steps.load, params=params, prefetch=prefetch,
                               on_finished=steps.finished, record=record)
        else:
            report = run_batch([(cid, paths) for cid, paths in cases], out_dir=out, compute=steps.compute,
                               write=steps.write, load=steps.load, params=params, prefetch=prefetch, executor=spec,
                               remote=remote, on_result=steps.case_done, record=record)
        if outputs is not None and outputs.statistics:
            from medseg.inference.outputs import write_cohort_statistics

            write_cohort_statistics(out, [o.case_id for o in report.outcomes if o.status != "failed"])
        return report
    finally:
        if bar is not None:
            bar.close()
        predictor.on_windows = None
        _finish_timings(clock, out, report)


def run_predict(*, model: str | Path, input_path: str | Path, output: str | Path, device: str = "auto",
                tta_axes=(), tta_mode: str = "volume", overlap: float = 0.5, batch_size: int = 4,
                save_probabilities: bool = False, probability_dtype: str = "float16", workers: int | None = None,
                weights: str = "best", postprocess: bool = True, progress: bool = False, executor=None,
                folds: list[int] | None = None, force: bool = False, output_formats=None, statistics: bool = False,
                preview: bool = False, backend: str = "auto"):
    """``medseg predict`` and the ``predict`` stage: resolve the device once, load the bundle (failing fast,
    before any case, when it is missing, damaged or mismatched), then :func:`predict_folder`.

    ``workers``: CPU threads for the network and resampling (None: the cores free now,
    :func:`medseg.device.choose_threads`). ``backend``: auto, torch or openvino
    (:mod:`medseg.inference.backends`).
    ``force``: predict cases the bundle's input guard refuses (:mod:`medseg.preprocess.guard`).
    ``executor``: local (default) or ray (:mod:`medseg.executors`); on Ray the bundle is loaded here
    on the CPU (to check it and hash the run's parameters) and once more on each model actor.
    ``output_formats`` (nifti, dicom-seg, seg-nrrd), ``statistics``, ``preview``: see
    :mod:`medseg.inference.outputs`.
    """
    from medseg.executors import as_spec
    from medseg.inference.outputs import CaseOutputs, parse_output_formats

    spec = as_spec(executor)
    formats = parse_output_formats(output_formats)    # a bad format fails before the bundle is loaded
    factory = partial(build_predictor, model, device=device, weights=weights,
                      tta_axes=None if tta_axes is None else tuple(tta_axes),
                      tta_mode=tta_mode, overlap=overlap, batch_size=batch_size, postprocess=postprocess,
                      threads=workers, folds=folds, force=force, backend=backend)
    # on Ray the predictor here only checks the bundle and hashes the run's parameters: no network prepared
    predictor = factory() if spec.is_local else factory(device="cpu", prepare=False)
    outputs = CaseOutputs.for_predictor(predictor, formats=formats, statistics=statistics, preview=preview)
    return predict_folder(predictor, input_path, output, save_probabilities=save_probabilities,
                          probability_dtype=probability_dtype, progress=progress, executor=spec,
                          predictor_factory=factory, outputs=outputs if outputs.extra else None)
