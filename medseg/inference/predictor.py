"""The predictor: a model bundle applied to one volume, the result back on the input's grid.

>>> p = Predictor.from_bundle("hippocampus_unet", device="cpu")     # doctest: +SKIP
>>> pred = p.predict_volume(read_volume("case.nii.gz", kind="image"))  # doctest: +SKIP
>>> pred.label.affine is the input's affine, pred.label.shape the input's shape  # doctest: +SKIP

Steps: the bundle's preprocessing plan (:mod:`medseg.inference.prepare`: exactly training's
resampling and normalisation), sliding-window inference with the bundle's patch size
(:func:`medseg.inference.sliding_window`; 2D models slice by slice along the coarsest axis),
optional mirroring test-time augmentation (:func:`medseg.inference.mirror_tta`), softmax, class
probabilities resampled linearly back to the input grid and the crop undone, argmax, then the
bundle's post-processing rules (``postprocess:`` in bundle.yaml, :func:`medseg.postprocess.apply_postprocess`).
The label map comes out as uint8 (uint16 beyond 256 classes) with the input's exact shape,
spacing, origin and direction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.device import release_free_memory
from medseg.errors import InputError
from medseg.manifest import sha256_file
from medseg.preprocess.grid import grid_of
from medseg.volume import Volume

log = logging.getLogger("medseg.inference")

#: above this many bytes of probabilities on the input grid, labels are resampled instead (see prepare.py)
MAX_PROB_BYTES = 2 * 2 ** 30
#: a single-pass case's class probabilities above this many float32 bytes are finished slab by slab
#: (:mod:`medseg.inference.stream`) when they are not kept
STREAM_BYTES = 256 << 20
TRIM_BYTES = 64 << 20   # a preprocessed image this large: the heap is trimmed before the sliding window


@dataclass
class Prediction:
    """``label``: uint8/uint16 label Volume on the input grid. ``probabilities``: (K, z, y, x) float32
    on the same grid, or None when not asked for. ``warnings``: messages about this case.
    ``timings``: seconds spent in ``preprocess``, ``forward``, ``invert`` and ``postprocess``
    (see :mod:`medseg.inference.timings`). ``source``: the input volume (first channel), for outputs
    that need the image or its DICOM origin (:mod:`medseg.inference.outputs`)."""

    label: Volume
    probabilities: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    source: Volume | None = None


class Predictor:
    """Apply a loaded model bundle to volumes.

    Parameters
    ----------
    model : torch.nn.Module in eval mode, on ``device``.
    meta : the bundle's metadata (:func:`medseg.bundle.read_meta`).
    device : torch.device the model is on (resolve it once with :func:`medseg.device.resolve_device`).
    tta_axes : spatial axes (0 = z, 1 = y, 2 = x) to mirror for test-time augmentation; ``()`` = off;
        ``None`` = the bundle's default (``inference.tta_axes`` in bundle.yaml, else off).
    tta_mode : ``"volume"`` (default): the whole volume is flipped and the softmax probabilities of the
        flips averaged (:func:`medseg.inference.mirror_tta`); ``"window"``: each batch of windows is
        flipped inside the sliding window and the logits averaged before blending (nnU-Net's way: no
        flipped copies of the volume or extra probability volumes in memory). The two give the same
        segmentation up to the difference between averaging logits and probabilities (and, where the
        window grid is not mirror-symmetric, windows placed a few voxels apart).
    overlap : sliding-window overlap in [0, 1).
    batch_size : windows per forward pass.
    blend : "gaussian" or "constant" window weights.
    postprocess : apply the bundle's ``postprocess`` rules (if it has any).
    threads : CPU threads for resampling and for the backend's pool (None: their defaults; the CLI
        sizes it with :func:`medseg.device.choose_threads`).
    backend : ``"torch"`` (default here), ``"openvino"`` or ``"auto"`` (OpenVINO on the CPU when it
        imports): what runs the network (:mod:`medseg.inference.backends`); every fold gets its own
        converted network, prepared on first use (or by :meth:`runners`). ``"openvino"`` without
        OpenVINO raises ConfigError; a conversion that fails falls back to PyTorch with a warning.
    force : predict cases the bundle's ``input_guard`` refuses (another modality or body region; see
        :mod:`medseg.preprocess.guard`); they are then only warned about.
    """

    def __init__(self, model, meta: dict[str, Any], *, device: Any = "cpu", tta_axes: Sequence[int] | None = (),
                 tta_mode: str = "volume", overlap: float = 0.5, batch_size: int = 4, blend: str = "gaussian",
                 postprocess: bool = True,
                 threads: int | None = None, source: str | Path | None = None,
                 weights_path: str | Path | Sequence[str | Path] | None = None, force: bool = False,
                 backend: str = "torch"):
        from medseg.inference.bundles import check_meta
        from medseg.inference.openvino_runtime import resolve_backend

        check_meta(meta, source)
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        self.model, self.meta = self.models[0], meta
        self.device = device        # a torch.device, or a name ("cpu", "cuda:0"): torch is not imported for it
        self.plan = dict(meta["plan"])
        kw = meta["model"].get("kwargs", {})
        self.spatial_dims = int(kw.get("spatial_dims", 3))
        self.patch_size = tuple(int(p) for p in meta.get("patch_size", self.plan.get("patch_size")))
        self.channels = int(meta.get("channels", kw.get("in_channels", 1)))
        self.labels = {int(k): str(v) for k, v in meta["labels"].items()}
        if tta_axes is None:      # the bundle's default (``inference: {tta_axes: [...]}``), else none
            tta_axes = (meta.get("inference") or {}).get("tta_axes") or ()
        self.tta_axes = tuple(int(a) for a in tta_axes)
        for a in self.tta_axes:
            if a not in (0, 1, 2):
                raise InputError(f"TTA axis {a} must be 0 (z), 1 (y) or 2 (x)", code="bad_params")
        if tta_mode not in ("volume", "window"):
            raise InputError(f"TTA mode {tta_mode!r} must be 'volume' or 'window'", code="bad_params")
        self.tta_mode = tta_mode
        self.overlap, self.batch_size, self.blend = float(overlap), int(batch_size), blend
        self.rules = meta.get("postprocess") if postprocess else None
        self.threads = threads
        self.force = bool(force)
        self.guard = meta.get("input_guard") if isinstance(meta.get("input_guard"), dict) else None
        self.on_windows: Any = None     # progress: called with (windows done, windows in this case)
        self.source = str(source) if source is not None else None
        wp: Sequence[Any] = weights_path if isinstance(weights_path, (list, tuple)) else [weights_path]
        self.weights_paths = [Path(p) for p in wp if p is not None]
        self._identity: dict[str, Any] | None = None
        self.backend = resolve_backend(backend, self.device)     # fails here, before any case, when unusable
        self._runners: list[Any] | None = None
        self._weight_digests: list[str] | None = None
        self._torch_threads_set = False

    @classmethod
    def from_bundle(cls, spec: str | Path, *, device: Any = "cpu", weights: str = "best",
                    folds: list[int] | None = None, **kwargs: Any) -> Predictor:
        """Load a bundle by path or registered name (:func:`medseg.inference.bundles.resolve_bundle`).

        A fold ensemble loads every fold (or ``folds``); its prediction is the mean of the folds'
        probabilities. A missing, damaged or mismatched bundle raises InputError naming the file,
        before any case is read.
        """
        from medseg.bundle import load_models
        from medseg.inference.bundles import resolve_bundle

        path = resolve_bundle(spec)
        cached = cls._from_cache(path, device=device, weights=weights, folds=folds, **kwargs)
        if cached is not None:
            return cached
        models, meta, paths = load_models(path, weights=weights, device=device, folds=folds)
        return cls(models, meta, device=device, source=path, weights_path=paths, **kwargs)

    @classmethod
    def _from_cache(cls, path: Path, *, device: Any, weights: str, folds: list[int] | None,
                    **kwargs: Any) -> Predictor | None:
        """The predictor of a bundle whose every fold runs on OpenVINO from the cache, made without torch
        (:func:`~medseg.inference.openvino_runtime.cached_bundle_runners`; folds not cached yet are converted
        by a child process first, :mod:`medseg.inference.convert`); None when the backend is not OpenVINO on
        the CPU or a fold is still not cached (the caller then loads the weights and converts in-process)."""
        from medseg.bundle import bundle_weight_files, read_meta
        from medseg.inference.openvino_runtime import openvino_status

        backend = str(kwargs.get("backend") or "torch").strip().lower()
        if backend not in ("auto", "openvino") or str(device) != "cpu" or openvino_status() is not None:
            return None
        meta = read_meta(path)
        paths = bundle_weight_files(path, meta, weights=weights, folds=folds)
        predictor = cls([None] * len(paths), meta, device=device, source=path, weights_path=paths, **kwargs)
        predictor._weight_digests = [sha256_file(p) for p in paths]
        from medseg.inference.convert import bundle_runners

        runners = bundle_runners(path, predictor.sources() or [], weights=weights, folds=folds,
                                 batch=predictor.batch_size, channels=predictor.channels, window=predictor.patch_size,
                                 threads=predictor.threads)
        if runners is None:
            return None
        predictor._runners = predictor.models = runners
        predictor.model = runners[0]
        return predictor

    def sources(self) -> list[dict[str, str]] | None:
        """Per fold, the files its network comes from (:func:`~medseg.inference.openvino_runtime.bundle_sources`);
        None for models not loaded from a bundle."""
        if not self.weights_paths or len(self.weights_paths) != len(self.models):
            return None
        from medseg.inference.openvino_runtime import bundle_sources

        return bundle_sources(self.meta, self.weight_digests())

    def weight_digests(self) -> list[str]:
        """SHA-256 of each weights file (computed once)."""
        if self._weight_digests is None:
            self._weight_digests = [sha256_file(p) for p in self.weights_paths]
        return self._weight_digests

    def runners(self) -> list[Any]:
        """The callables that run the network of each fold on :attr:`backend` (converted once, then reused)."""
        if self._runners is None:
            from medseg.inference.backend_cache import cache_dirs
            from medseg.inference.backends import BackendOptions, prepare_models

            opts = BackendOptions(batch=self.batch_size, channels=self.channels, window=self.patch_size,
                                  threads=self.threads, cache_dirs=cache_dirs(self.source))
            self._runners = prepare_models(self.models, self.backend, opts, self.sources())
            if self.backend != "torch":     # a conversion's garbage (traced graphs, copies): not kept resident
                import gc

                gc.collect()
                release_free_memory()
        return self._runners

    def backends_used(self) -> list[str]:
        """Per fold, the backend that actually runs it (``torch`` where a conversion fell back)."""
        return [str(getattr(r, "backend", "torch")) for r in self.runners()]

    def provenance(self) -> dict[str, Any] | None:
        """The bundle folder this predictor was loaded from (absolute) and its
        :func:`medseg.bundle.bundle_sha256`; None for a model not loaded from a bundle folder."""
        if self.source is None or not self.weights_paths:
            return None
        from medseg.bundle import bundle_sha256

        self.identity()
        src = Path(self.source)
        return {"path": str(src.absolute()),
                "sha256": bundle_sha256(src, self.weights_paths, self.weight_digests())}

    def identity(self) -> dict[str, Any]:
        """What identifies the model's outputs: architecture, labels, plan and a SHA-256 of the weights."""
        if self._identity is None:
            import hashlib
            import json

            if self.weights_paths:
                digests = self.weight_digests()
                digest = digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()
            else:
                import torch

                h = hashlib.sha256()
                for m in self.models:
                    for k, v in sorted(m.state_dict().items()):
                        h.update(k.encode())
                        h.update(v.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                digest = h.hexdigest()
            desc = {"model": self.meta["model"], "plan": self.plan, "labels": self.labels,
                    "patch_size": self.patch_size}
            self._identity = {"architecture": self.meta["model"]["name"], "weights_sha256": digest,
                              "meta_sha256": hashlib.sha256(json.dumps(desc, sort_keys=True, default=str)
                                                            .encode()).hexdigest()}
        return self._identity

    # ------------------------------------------------------------------ prediction
    def predict_volume(self, image: Volume | Sequence[Volume], *, probabilities: bool = False) -> Prediction:
        """Segment one case given as a Volume (or one Volume per input channel).

        Returns a :class:`Prediction` whose label map lies on the grid of ``image`` (shape and affine).
        """
        from medseg.inference.prepare import (
            invert_probabilities,
            labels_to_input_grid,
            preprocess,
            spacing_warning,
            stack_channels,
        )

        t0 = time.perf_counter()
        chans = [image] if isinstance(image, Volume) else list(image)
        if not chans:
            raise InputError("no input volume given", code="channels")
        path = chans[0].meta.get("path")
        arr, ref = stack_channels(chans, expected=self.channels, path=path, copy=False)   # int16 CT: no copy
        target = grid_of(ref)
        warnings = []
        warnings += self.check_input(np.asarray(arr[0], dtype=np.float32), ref.spacing_mm, path)
        msg = spacing_warning(ref.spacing_mm, self.plan)
        if msg and self.guard is None:   # a bundle with an input guard warns about the spacing there
            log.warning("%s: %s", path or "input", msg)
            warnings.append(msg)
        prepared = preprocess(arr, target, self.plan)
        del arr       # the float32 stack of the input (the input itself stays with the caller)
        if prepared.image.nbytes >= TRIM_BYTES:
            release_free_memory()     # the resampling's freed slabs, held by the C heap otherwise
        t1 = time.perf_counter()
        # (K, z', y', x') float32, or float16 for a large case whose probabilities are not kept
        probs = self._probabilities(prepared.image, prepared.grid.spacing_mm, compact=not probabilities)
        # the preprocessed image is not needed any more: its memory goes before the inversion's
        prepared.image = np.empty((prepared.image.shape[0], 0, 0, 0), dtype=np.float32)
        t2 = time.perf_counter()
        n_cls = probs.shape[0]
        dtype = np.uint8 if n_cls <= 256 else np.uint16
        need = n_cls * int(np.prod(target.shape)) * 4
        if probabilities or need <= MAX_PROB_BYTES:
            # argmax of the probabilities on the input grid, slab by slab: the K maps exist there in full only
            # when they are asked for
            full, label = invert_probabilities(probs, prepared, target, keep_probabilities=probabilities,
                                               label_dtype=dtype, threads=self.threads)
            if label is None:      # invert_probabilities always gives the label map when given its dtype
                raise RuntimeError("no label map from the inversion")
            del probs
        else:
            log.info("%s: %d classes x %s voxels: resampling the label map per label instead of the probabilities",
                     path or "input", n_cls, target.shape)
            full = None
            label = labels_to_input_grid(np.argmax(probs, axis=0).astype(dtype), prepared, target, threads=self.threads)
        t3 = time.perf_counter()
        if self.rules:
            from medseg.postprocess import apply_postprocess

            label = apply_postprocess(label, ref.spacing_mm, self.rules, inplace=True)   # the label map is ours
        out = Volume(label, ref.spacing_mm, ref.origin_mm, ref.direction, is_label=True,
                     meta={"path": path} if path else {})
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "forward": t2 - t1, "invert": t3 - t2, "postprocess": t4 - t3}
        return Prediction(out, full if probabilities else None, warnings, timings, source=chans[0])

    def check_input(self, image: np.ndarray, spacing_mm: Sequence[float], path: Any = None) -> list[str]:
        """Warnings about a case (channel 0, raw intensities) against the bundle's ``input_guard``; raises
        InputError (code ``wrong_input``) for a case it refuses, unless ``force``. Runs before any inference."""
        from medseg.preprocess.guard import check_case

        warnings, refusals = check_case(image, spacing_mm, self.guard)
        for w in warnings:
            log.warning("%s: %s", path or "input", w)
        if refusals and not self.force:
            raise InputError("; ".join(refusals) + " - not predicted (medseg predict --force predicts it anyway)",
                             path=path, code="wrong_input")
        for r in refusals:
            log.warning("%s: %s (predicted anyway: --force)", path or "input", r)
        return warnings + refusals

    def _probabilities(self, image: np.ndarray, spacing_mm: Sequence[float], *, compact: bool = False) -> np.ndarray:
        """Softmax probabilities (K, z, y, x) float32 on the CPU for a preprocessed image (C, z, y, x).
        ``compact``: a large single-pass case (one fold, no whole-volume mirroring, 3D, CPU; above
        :data:`STREAM_BYTES` as float32) comes as float16, finished slab by slab
        (:func:`~medseg.inference.stream.stream_probabilities`): for labels, not for saved probabilities."""
        axis, axes = 0, self.tta_axes
        if self.spatial_dims == 2:
            from medseg.inference.prepare import plan_spacing
            from medseg.models.slicewise import slicing_axis

            # the axis the 2D model was trained along (bundle.yaml slice_axis, written by medseg train), else
            # the coarsest axis of the plan's spacing; the case's own grid spacing only for plans without one
            # (a near-isotropic case kept on its own grid must not flip the axis by a 0.1 % spacing difference)
            axis = self.meta.get("slice_axis")
            axis = int(axis) if axis is not None else slicing_axis(plan_spacing(self.plan) or spacing_mm)
            axes = tuple(a for a in axes if a != axis)   # flipping the slice order changes nothing for a 2D model

        from medseg.inference.numpy_path import probabilities_np, takes_numpy
        from medseg.inference.windows import WindowCounter, count_windows, mirror_dims

        models = self.runners()
        windows = count_windows(image.shape[1:], self.patch_size, self.overlap, axis=axis)
        # a case of fewer windows than a batch: its flips share the forward passes (fuller batches)
        group = min(2 ** len(axes), max(1, self.batch_size // max(windows, 1)))
        if self.on_windows is not None:        # progress over the windows of this case
            counter = WindowCounter(self.on_windows, windows * len(self.models) * 2 ** len(axes))
            models = [counter.wrap(m) for m in models]
        stream = (compact and len(models) == 1 and (self.tta_mode == "window" or not axes)
                  and self.spatial_dims == 3 and len(self.labels) * image[0].size * 4 > STREAM_BYTES)
        if takes_numpy(models) and not stream:     # OpenVINO: numpy around it, torch not needed
            return probabilities_np(models, image, self.patch_size, overlap=self.overlap, batch_size=self.batch_size,
                                    blend=self.blend, axis=axis, tta_axes=axes, tta_mode=self.tta_mode, group=group)
        import torch

        from medseg.inference.sliding_window import sliding_window
        from medseg.inference.tta import activate_, mirror_tta

        if self.threads and not self._torch_threads_set:
            torch.set_num_threads(int(self.threads))
            self._torch_threads_set = True
        x = torch.from_numpy(image)[None].to(self.device)
        total = None
        if stream:
            from medseg.inference.stream import can_stream, stream_probabilities

            if can_stream(x, self.patch_size):
                with torch.inference_mode():      # no float32 volume of the classes: float16, slab by slab
                    return stream_probabilities(models[0], x, self.patch_size, self.overlap,
                                                batch_size=self.batch_size, blend=self.blend,
                                                flips=mirror_dims(axes))[0].numpy()
        with torch.inference_mode():
            for model in models:          # a fold ensemble: the mean of the folds' probabilities
                def run(x: torch.Tensor, mirror_axes: Sequence[int] = (), model=model) -> torch.Tensor:
                    return sliding_window(model, x, self.patch_size, overlap=self.overlap,
                                          batch_size=self.batch_size, blend=self.blend, axis=axis,
                                          device=self.device, mirror_axes=mirror_axes)

                if self.tta_mode == "window" and axes:
                    p = activate_(run(x, axes), "softmax")     # in place: no second probability volume
                else:
                    p = mirror_tta(run, x, axes=axes, activation="softmax", group=group)
                p = p[0].to("cpu", torch.float32)
                total = p if total is None else total.add_(p)
            if len(self.models) > 1:
                total /= len(self.models)
            return total.numpy()
