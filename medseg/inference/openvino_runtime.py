"""OpenVINO at run time, without torch: the import, the core, the compile settings, the runner of a
converted network, and the bundle networks found in the cache (:mod:`medseg.inference.backend_cache`).

Converting a network needs torch (:mod:`medseg.inference.backends`); running one that is already
converted does not. A bundle whose every fold is cached therefore predicts without importing torch
(:func:`cached_bundle_runners`), which is most of a short cohort's start-up (torch takes ~0.65 s to
import on the 2-core machine). The cache key of a bundle's network names its source, the SHA-256 of the
weights file and of the bundle's model description (:func:`bundle_sources`), so it can be found from the
files alone; the torch path writes the same fields, plus the digest of the loaded state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medseg.device import BACKEND_CHOICES
from medseg.errors import ConfigError

log = logging.getLogger("medseg.inference")

OPENVINO_EXTRA = "pip install 'medseg[openvino]'"
EXPORT_FORMAT = "medseg-openvino/2"     # bump when the export recipe or the key changes: older entries are then stale


@lru_cache(maxsize=1)
def import_openvino() -> tuple[Any, str | None]:
    """``(module, None)`` or ``(None, why)``; imported once per process."""
    try:
        import openvino
    except ModuleNotFoundError:
        return None, "not installed"
    except Exception as exc:     # an install that cannot load (missing shared library, ABI mismatch ...)
        return None, f"cannot be imported ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    return openvino, None


def openvino_status() -> str | None:
    """None when OpenVINO can be imported, else why not."""
    return import_openvino()[1]


def openvino_module():
    """The OpenVINO module; RuntimeError (a backend failure: PyTorch takes over) when it cannot be imported."""
    ov, why = import_openvino()
    if ov is None:
        raise RuntimeError(f"OpenVINO is {why}")
    return ov


@lru_cache(maxsize=1)
def core():
    """The process's one OpenVINO ``Core``."""
    return openvino_module().Core()


def resolve_backend(name: str | None, device: Any = "cpu") -> str:
    """The backend to run: ``auto`` -> ``openvino`` on the CPU when it imports, else ``torch``.

    ``openvino`` asked for without a usable install, or on a CUDA device, is a ConfigError (exit 2)
    naming the extra to install.
    """
    name = (name or "auto").strip().lower()
    dev = str(device)
    if name not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {name!r} (use {', '.join(BACKEND_CHOICES)})", code="bad_params")
    if name == "torch":
        return "torch"
    why = openvino_status()
    if name == "auto":
        if dev.split(":")[0] != "cpu":
            return "torch"
        if why is not None and why != "not installed":
            log.warning("backend auto: OpenVINO %s; running the network on PyTorch", why)
        return "openvino" if why is None else "torch"
    if dev.split(":")[0] != "cpu":
        raise ConfigError(f"--backend openvino runs on the CPU, but the device is {dev}; use --device cpu, or "
                          "--backend torch (or auto) on CUDA", code="bad_params")
    if why is not None:
        raise ConfigError(f"--backend openvino: OpenVINO is {why}; install the extra with {OPENVINO_EXTRA} "
                          "(or use --backend torch)", code="missing_extra")
    return "openvino"


def compile_config(threads: int | None) -> dict[str, Any]:
    """OpenVINO CPU settings: one stream at the latency hint, float32 arithmetic, ``threads`` threads."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


BATCH_MODES = ("static", "pad", "dynamic")


class OpenVinoModel:
    """An OpenVINO network (IR with a dynamic batch axis) with the sliding window's contract.

    ``batch_mode``: ``static`` (default) compiles one static-shape network per batch size met, on
    first use (the full batch and the last, shorter one: ~0.2-0.4 s each, once); ``pad`` compiles
    only the full batch and pads a short batch with zeros (their outputs dropped); ``dynamic``
    compiles one network with a dynamic batch axis. Measured with the hippocampus windows (batch 4,
    loaded 2-core machine, one process): static 4 windows 339 ms, dynamic 393 ms; one window static
    75 ms, dynamic 87 ms, padded to 4: 328 ms. Hippocampus cases are one window each, so padding
    would cost 4x. A batch larger than ``batch`` runs in chunks. Not thread-safe (infer requests
    are reused): one per model thread."""

    training = False
    backend = "openvino"
    takes_numpy = True     # numpy arrays in, numpy arrays out (tensors in, tensors out)

    def __init__(self, model, batch: int, *, threads: int | None = None, batch_mode: str = "static",
                 name: str = "model"):
        if batch_mode not in BATCH_MODES:
            raise ConfigError(f"OpenVINO batch mode {batch_mode!r} is not one of {', '.join(BATCH_MODES)}")
        self.model, self.batch, self.mode, self.name = model, int(batch), batch_mode, name
        self.threads = threads
        self._requests: dict[int, Any] = {}
        self._pad: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"OpenVinoModel({self.name}, batch={self.batch}, {self.mode})"

    def _request(self, n: int):
        """The infer request for a batch of ``n`` (0: the dynamic network), compiled on first use."""
        if n not in self._requests:
            m = self.model.clone()
            shape = list(m.inputs[0].get_partial_shape())
            m.reshape([-1 if n == 0 else n, *shape[1:]])
            self._requests[n] = core().compile_model(m, "CPU", compile_config(self.threads)).create_infer_request()
        return self._requests[n]

    def _run(self, arr: np.ndarray) -> np.ndarray:
        n = arr.shape[0]
        if self.mode == "dynamic":
            req = self._request(0)
        elif self.mode == "pad" and n < self.batch:
            if self._pad is None or self._pad.shape[1:] != arr.shape[1:]:
                self._pad = np.zeros((self.batch, *arr.shape[1:]), np.float32)
            self._pad[:n] = arr
            self._pad[n:] = 0.0
            arr = self._pad
            req = self._request(self.batch)
        else:
            req = self._request(n)
        res = req.infer({0: arr}, share_inputs=True)
        return np.array(res[0][:n], dtype=np.float32, copy=True)   # the request reuses its output buffer

    def __call__(self, x):
        if isinstance(x, np.ndarray):
            return self.run_numpy(np.ascontiguousarray(x, dtype=np.float32))
        import torch

        return torch.from_numpy(self.run_numpy(x.detach().to("cpu", torch.float32).contiguous().numpy()))

    def run_numpy(self, arr: np.ndarray) -> np.ndarray:
        """Logits of a C-contiguous float32 batch, in chunks of at most ``batch`` windows."""
        parts = [self._run(arr[i:i + self.batch]) for i in range(0, arr.shape[0], self.batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


# ------------------------------------------------------------------ the cache key, without torch
def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (from its metadata: the module is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def bundle_sources(meta: dict[str, Any], weight_digests: Sequence[str]) -> list[dict[str, str]]:
    """Per fold, what its network is made from: the SHA-256 of the weights file and of the bundle's
    ``model`` entry (architecture and kwargs). The same files give the same network: the torch path
    checked them when it converted it."""
    spec = hashlib.sha256(json.dumps(meta.get("model"), sort_keys=True, default=str).encode()).hexdigest()
    return [{"weights_file_sha256": str(d), "model_sha256": spec} for d in weight_digests]


def key_fields(*, fold: str, channels: int, window: Sequence[int], exact_norm: bool,
               source: dict[str, str] | None) -> dict[str, Any]:
    """The part of a converted network's cache key known without torch (see :mod:`medseg.inference.backends`)."""
    import medseg

    ov, _ = import_openvino()
    return {"format": EXPORT_FORMAT, "fold": fold, "input": [-1, int(channels), *(int(w) for w in window)],
            "exact_norm": bool(exact_norm), "source": source, "openvino": getattr(ov, "__version__", None),
            "torch": dist_version("torch"), "medseg": medseg.__version__}


def cached_bundle_runners(sources: Sequence[dict[str, str]], *, channels: int, window: Sequence[int], batch: int,
                          threads: int | None, cache_dirs: Sequence[Path],
                          batch_mode: str = "static") -> list[OpenVinoModel] | None:
    """The OpenVINO runners of every fold of a bundle (``sources``: :func:`bundle_sources`) when all are in
    a cache folder, verified and compiled, else None (the torch path then converts what is missing; a
    damaged entry is logged here and rebuilt there). Nothing here imports torch."""
    from medseg.inference.backend_cache import entry_for

    if import_openvino()[0] is None or not sources or not cache_dirs:
        return None
    runners = []
    for i, source in enumerate(sources):
        name = f"fold_{i}" if len(sources) > 1 else "model"
        key = key_fields(fold=name, channels=channels, window=window, exact_norm=False, source=dict(source))
        found = None
        for root in cache_dirs:
            found = entry_for(key, root).load(partial=True)
            if found is not None:
                break
        if found is None:
            return None
        xml, bin_ = found
        ov = openvino_module()
        try:
            om = core().read_model(model=xml, weights=ov.Tensor(np.frombuffer(bin_, np.uint8).copy()))
            runner = OpenVinoModel(om, batch, threads=threads, batch_mode=batch_mode, name=name)
            runner._request(0 if batch_mode == "dynamic" else batch)
        except Exception as exc:     # the torch path reports it (one warning) and falls back
            log.debug("cached OpenVINO network for %s did not load: %s", name, exc)
            return None
        runners.append(runner)
    return runners
