"""Inference backends: the network of a bundle turned into the callable the sliding window runs.

The contract is :data:`medseg.inference.sliding_window.Model`'s: a ``(B, C, *window)`` float32 tensor in,
``(B, K, *window)`` float32 logits out. ``torch`` is the module itself (CPU or CUDA); ``openvino``
converts it once (``openvino.convert_model`` on the module itself, no ONNX file) and runs it with
OpenVINO's CPU plugin in float32 (``INFERENCE_PRECISION_HINT f32``: bf16 is slower on CPUs without
AMX and moves logits by ~0.1). ``auto`` is OpenVINO on the CPU when it can be imported, PyTorch on
CUDA or without it.

>>> resolve_backend("torch", "cpu")
'torch'

**Cache.** A converted network is kept as OpenVINO IR (``model.xml`` + ``model.bin``) with a
``key.json`` sidecar holding the key (the source files' SHA-256 when the module came from a bundle,
fold, input shape, export recipe, OpenVINO, torch and medseg versions, and the loaded state's digest)
and the SHA-256 of both files. An entry is found by source (else the state's digest), fold and shape;
its sidecar must match the whole key and both files their hashes, else it is rebuilt (a cache from
another OpenVINO or medseg version is stale, a truncated file damaged: neither is trusted). Entries are
written into a temporary folder and renamed into place. Where: ``$MEDSEG_CACHE_DIR`` when set, else
``BUNDLE/.medseg-cache`` when the bundle folder is writable, else ``$XDG_CACHE_HOME/medseg``
(``~/.cache/medseg``). Running a cached network needs no torch: :mod:`medseg.inference.openvino_runtime`.

**Normalisation.** OpenVINO runs ``InstanceNorm`` as one MVN kernel. :class:`ExactInstanceNorm`
(two passes, each mean taken one spatial axis at a time) is closer to float64 on one layer (1.6e-6
against MVN's 8.6e-5 on a 16 x 128^3 activation) but, measured on the whole shipped network
(``benchmarks/bench_backends.py forward``), it was both slower and *less* accurate on 128^3 windows
(max logit difference to PyTorch 0.04 against 0.0099 with MVN, argmax 99.995 % against 99.999 %;
equal on 40 x 56 x 40 windows): the remaining drift comes from the convolutions, not the norm. So the
plain export (MVN) is the default; ``exact_norm=True`` keeps the replacement as an option.

**Never a wrong result.** A freshly converted network is checked against PyTorch on one random
batch before it is cached; a failure to import, convert, compile or check logs one warning line
and the fold runs on PyTorch.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.inference.backend_cache import cache_dirs, entry_for, remove_superseded, weights_digest
from medseg.inference.openvino_runtime import (
    BATCH_MODES,
    OpenVinoModel,
    compile_config,
    core,
    key_fields,
    openvino_module,
    openvino_status,
    resolve_backend,
)
from medseg.registry import Registry

log = logging.getLogger("medseg.inference")

__all__ = ["BATCH_MODES", "OpenVinoModel", "compile_config", "openvino_status",   # the runtime's, used here
           "resolve_backend"]

BACKENDS = Registry("inference backend")

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackendOptions:
    """How a network is prepared: ``batch`` windows per call of ``(channels, *window)`` each; ``threads``
    for the backend's own pool (None: its default); ``cache_dirs``: candidate cache folders, first
    writable wins; ``batch_mode``: how batches shorter than ``batch`` run (:class:`OpenVinoModel`);
    ``exact_norm``: :class:`ExactInstanceNorm` in the exported graph; ``check``: compare a fresh
    export with PyTorch once."""

    batch: int
    channels: int
    window: tuple[int, ...]
    threads: int | None = None
    cache_dirs: tuple[Path, ...] = ()
    batch_mode: str = "static"
    exact_norm: bool = False
    check: bool = True


# ------------------------------------------------------------------ choosing a backend
def prepare_model(model: torch.nn.Module, backend: str, options: BackendOptions, *, name: str = "model",
                  source: dict[str, str] | None = None) -> Model:
    """``model`` as a callable for the sliding window on ``backend`` (a name resolved by
    :func:`resolve_backend`). ``source``: the files it was loaded from
    (:func:`~medseg.inference.openvino_runtime.bundle_sources`), recorded in the cache key so that a later
    run finds the converted network without torch. Any failure of a backend other than ``torch`` logs one
    warning line and returns the PyTorch module: the prediction is then PyTorch's, never a wrong one."""
    factory = BACKENDS.get(backend)
    try:
        return factory(model, options, name=name, source=source)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        log.warning("backend %s failed for %s (%s: %s); running it on PyTorch", backend, name,
                    type(exc).__name__, msg)
        return model


@BACKENDS.register("torch")
def _torch_backend(model: torch.nn.Module, options: BackendOptions, *, name: str = "model", source=None) -> Model:
    return model


# ------------------------------------------------------------------ exact instance normalisation
class ExactInstanceNorm(torch.nn.Module):
    """``InstanceNorm1/2/3d`` (instance statistics, optional affine) written as two passes of
    per-axis means: the same function as the module it replaces, in float32 sums no longer than one
    spatial axis once exported (see the module doc)."""

    def __init__(self, norm: torch.nn.modules.instancenorm._InstanceNorm):
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = None if norm.weight is None else torch.nn.Parameter(norm.weight.detach().clone(), False)
        self.bias = None if norm.bias is None else torch.nn.Parameter(norm.bias.detach().clone(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = range(x.ndim - 1, 1, -1)
        mean = x
        for d in dims:
            mean = mean.mean(d, keepdim=True)
        centred = x - mean
        var = centred * centred
        for d in dims:
            var = var.mean(d, keepdim=True)
        y = centred * torch.rsqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y


def with_exact_norm(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A copy of ``model`` whose instance-statistics ``InstanceNorm`` layers are :class:`ExactInstanceNorm`,
    and how many were replaced (layers that use running statistics in eval mode are kept)."""
    out = copy.deepcopy(model).eval()
    n = 0
    for parent in list(out.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
                setattr(parent, child_name, ExactInstanceNorm(child))
                n += 1
    return out, n


def cache_key(model: torch.nn.Module, options: BackendOptions, *, fold: str,
              source: dict[str, str] | None = None) -> dict[str, Any]:
    """What a converted network depends on (see the module doc): the fields known without torch
    (:func:`~medseg.inference.openvino_runtime.key_fields`) and the digest of the loaded state."""
    return {**key_fields(fold=fold, channels=options.channels, window=options.window, exact_norm=options.exact_norm,
                         source=source),
            "weights_sha256": weights_digest(model), "architecture": type(model).__name__}


# ------------------------------------------------------------------ OpenVINO
def export_openvino(model: torch.nn.Module, options: BackendOptions):
    """Convert ``model`` (after :func:`with_exact_norm` when ``options.exact_norm``) to an OpenVINO model
    with input ``(dynamic batch, channels, *window)``."""
    ov = openvino_module()
    net = with_exact_norm(model)[0] if options.exact_norm else copy.deepcopy(model).eval()
    net = net.to("cpu").float()
    example = torch.zeros((options.batch, options.channels, *options.window))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")    # tracer notes on shape arithmetic that is constant per window size
        return ov.convert_model(net, example_input=example, input=[(-1, options.channels, *options.window)])


def check_against_torch(model: torch.nn.Module, runner: Model, options: BackendOptions, *, tol: float = 1e-2,
                        seed: int = 0) -> float:
    """Max abs logit difference between ``runner`` and ``model`` on random windows (standard normal,
    like z-scored images), a full batch and a single window (the batch axis is dynamic in the IR);
    RuntimeError when above ``tol`` (a wrong conversion, not float32 rounding, ~1e-5 .. 1e-3 here)."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in sorted({options.batch, 1}, reverse=True):
        x = torch.randn((n, options.channels, *options.window), generator=g)
        with torch.no_grad():
            ref = model(x).float()
        got = runner(x)
        if got.shape != ref.shape:
            raise RuntimeError(f"converted network returns {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
        diff = float((got - ref).abs().max())
        if not np.isfinite(diff) or diff > tol:
            raise RuntimeError(f"converted network differs from PyTorch by {diff:.3g} (> {tol}) on a test batch")
        worst = max(worst, diff)
    return worst


@BACKENDS.register("openvino")
def _openvino_backend(model: torch.nn.Module, options: BackendOptions, *, name: str = "model",
                      source: dict[str, str] | None = None) -> Model:
    ov = openvino_module()
    key = cache_key(model, options, fold=name, source=source)
    entries = [entry_for(key, root) for root in options.cache_dirs]
    cached = None
    for entry in entries:
        cached = entry.load()
        if cached is not None:
            log.debug("OpenVINO network for %s from %s", name, entry.folder)
            break
    if cached is not None:
        xml, bin_ = cached
        om = core().read_model(model=xml, weights=ov.Tensor(np.frombuffer(bin_, np.uint8).copy()))
    else:
        om = export_openvino(model, options)
    runner = OpenVinoModel(om, options.batch, threads=options.threads, batch_mode=options.batch_mode, name=name)
    runner._request(0 if options.batch_mode == "dynamic" else options.batch)    # compile errors show here
    if cached is None:
        diff = check_against_torch(model, runner, options) if options.check else None
        for entry in entries:
            if entry.store(lambda p: ov.save_model(om, str(p), compress_to_fp16=False),
                           extra={"check_max_abs_diff": diff}):
                log.debug("OpenVINO network for %s cached in %s (%d older entries of it removed)", name,
                          entry.folder, remove_superseded(entry))
                break
        else:
            log.info("OpenVINO network for %s not cached (no writable cache folder of %s)", name,
                     ", ".join(map(str, options.cache_dirs)) or "none")
    return runner


def prepare_models(models: Sequence[torch.nn.Module], backend: str, options: BackendOptions,
                   sources: Sequence[dict[str, str]] | None = None) -> list[Model]:
    """Every model of an ensemble on ``backend``, each with its own compiled network (``fold_0`` ...);
    ``sources``: per model, the files it came from (see :func:`prepare_model`)."""
    return [prepare_model(m, backend, options, name=f"fold_{i}" if len(models) > 1 else "model",
                          source=sources[i] if sources else None)
            for i, m in enumerate(models)]


class PerShapeModel:
    """A module on a backend with one converted network per input shape met, built on first use (tile
    encoders: the tile size comes with each slide's grid). Calls take ``(B, C, *spatial)`` and return the
    module's output; ``feature_dim`` is the module's."""

    training = False

    def __init__(self, module: torch.nn.Module, backend: str, *, batch: int, threads: int | None = None,
                 cache_dirs: tuple[Path, ...] = (), name: str = "encoder"):
        self.module, self.backend, self.batch, self.threads = module, backend, int(batch), threads
        self.cache_dirs, self.name = tuple(cache_dirs), name
        self.feature_dim = getattr(module, "feature_dim", 0)
        self._runners: dict[tuple[int, ...], Model] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(int(s) for s in x.shape[1:])
        if shape not in self._runners:
            opts = BackendOptions(batch=self.batch, channels=shape[0], window=shape[1:], threads=self.threads,
                                  cache_dirs=self.cache_dirs)
            self._runners[shape] = prepare_model(self.module, self.backend, opts, name=self.name)
        return self._runners[shape](x)


def on_backend(module: torch.nn.Module, backend: str | None, *, batch: int, threads: int | None = None,
               name: str = "encoder") -> torch.nn.Module | PerShapeModel:
    """``module`` (on its device) as it runs on ``backend`` (``auto``/``torch``/``openvino``, resolved by
    :func:`resolve_backend` for the module's device): the module itself for PyTorch, else a
    :class:`PerShapeModel` caching its converted networks in :func:`~medseg.inference.backend_cache.cache_dirs`."""
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    chosen = resolve_backend(backend, dev)
    if chosen == "torch":
        return module
    return PerShapeModel(module, chosen, batch=batch, threads=threads, cache_dirs=cache_dirs(None), name=name)


def encoder_backend(backend: str | None, *, batch: int, device: Any = None):
    """What turns a built tile encoder into its runner on ``backend`` (``prepare`` of
    :func:`medseg.wsi.features.extract_features_batch`; picklable for Ray). With ``device``, a backend
    that cannot run there fails now (ConfigError, exit 2), before any slide."""
    from functools import partial

    if device is not None:
        resolve_backend(backend, device)
    return partial(on_backend, backend=backend, batch=batch)
