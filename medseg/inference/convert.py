"""Converting a bundle's networks for OpenVINO in a child process.

A conversion imports torch and OpenVINO's PyTorch front end, traces each fold and checks it against
PyTorch; what that leaves in a process (~200 MiB of libraries and heap on the hippocampus bundle) would
stay for the whole cohort, above a large volume's own peak. So :meth:`medseg.inference.predictor.Predictor.from_bundle`
has a child process convert the folds that are not cached (:func:`convert_in_child`: ``python -m
medseg.inference.convert``, the usual in-process path there, writing the usual cache), then loads them
from the cache without torch. When the child cannot (no writable cache folder, a conversion that fails,
no Python to start) the parent converts in-process as before, with its warnings and its fallback to
PyTorch: the child only ever saves work, it never decides a result.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("medseg.inference")

CHILD_ENV = "MEDSEG_OPENVINO_CONVERTING"    # set in the child: it converts in-process, never spawns again
TIMEOUT_S = 3600


def bundle_runners(bundle: Path, sources: list[dict[str, str]], *, weights: str, folds: list[int] | None,
                   batch: int, channels: int, window: tuple[int, ...], threads: int | None) -> list[Any] | None:
    """The OpenVINO runners of a bundle's folds (``sources``:
    :func:`~medseg.inference.openvino_runtime.bundle_sources`) from the cache, the folds not cached yet
    converted by a child process first (:func:`convert_in_child`); None when some fold is still missing."""
    from medseg.inference.backend_cache import cache_dirs
    from medseg.inference.openvino_runtime import cached_bundle_runners

    def look() -> list[Any] | None:
        return cached_bundle_runners(sources, channels=channels, window=window, batch=batch, threads=threads,
                                     cache_dirs=cache_dirs(bundle))

    runners = look()
    if runners is None and convert_in_child(bundle, weights=weights, folds=folds, batch=batch, channels=channels,
                                            window=window, threads=threads):
        runners = look()
    return runners


def convert_in_child(bundle: Path, *, weights: str, folds: list[int] | None, batch: int, channels: int,
                     window: tuple[int, ...], threads: int | None) -> bool:
    """Convert and cache the bundle's folds for OpenVINO in a child process (``batch`` windows of
    ``(channels, *window)`` per call, as the predictor runs them); True when it succeeded for every fold
    (the caller then finds them in the cache)."""
    from medseg.inference.backend_cache import cache_dirs

    if os.environ.get(CHILD_ENV) or not any(_writable(root) for root in cache_dirs(bundle)):
        return False      # nowhere to cache: the caller converts in-process (once, not twice)
    spec = json.dumps({"bundle": str(bundle), "weights": weights, "folds": folds, "batch": int(batch),
                       "channels": int(channels), "window": [int(w) for w in window], "threads": threads})
    log.info("converting the networks of %s for OpenVINO (once: they are cached)", bundle)
    try:
        res = subprocess.run([sys.executable, "-m", "medseg.inference.convert", spec], capture_output=True,
                             text=True, timeout=TIMEOUT_S, env={**os.environ, CHILD_ENV: "1"}, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("OpenVINO conversion in a child process did not run: %s", exc)
        return False
    if res.returncode != 0:
        log.debug("OpenVINO conversion in a child process failed (exit %d): %s", res.returncode,
                  res.stderr.strip()[-500:])
        return False
    return True


def _writable(root: Path) -> bool:
    """Whether cache entries can be written under ``root`` (made when missing)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK | os.X_OK)


def main(argv: list[str]) -> int:
    """The child: load the bundle's folds, convert, check and cache them (the in-process path of
    :mod:`medseg.inference.backends`, keyed by the same files); exit 0 when every fold runs on OpenVINO."""
    from medseg.bundle import load_models
    from medseg.inference.backend_cache import cache_dirs
    from medseg.inference.backends import BackendOptions, prepare_models
    from medseg.inference.openvino_runtime import OpenVinoModel, bundle_sources
    from medseg.manifest import sha256_file

    spec = json.loads(argv[0])
    models, meta, paths = load_models(spec["bundle"], weights=spec["weights"], folds=spec["folds"])
    opts = BackendOptions(batch=spec["batch"], channels=spec["channels"], window=tuple(spec["window"]),
                          threads=spec["threads"], cache_dirs=cache_dirs(spec["bundle"]))
    runners = prepare_models(models, "openvino", opts, bundle_sources(meta, [sha256_file(p) for p in paths]))
    return 0 if all(isinstance(r, OpenVinoModel) for r in runners) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
