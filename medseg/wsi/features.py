"""Tile features: tiles read in parallel DataLoader workers, batched, encoded (AMP on CUDA).

``extract_slide_features`` encodes the tiles of one slide (coordinates from ``tiles.h5``);
``extract_features_batch`` does it for every slide of a tiling folder, writing
``OUT/<slide>/features.h5`` (``features (N, C)``, ``coords (N, 2)``, metadata) atomically. A slide
whose features file exists with the same encoder, weights and tile grid is skipped (resumable); one
written by a different encoder (name, weights, random seed or normalisation) is refused, not
overwritten. The metadata records the encoder, its fingerprint, the weights file's name or the seed
of a random initialisation, and the input size, mpp and normalisation the encoder expects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import InputError, MedsegError, status_of
from medseg.fsutil import atomic_path, safe_join
from medseg.io.wsi import open_slide
from medseg.wsi.tiling import TileGrid, load_tiles

log = logging.getLogger("medseg.wsi.features")

__all__ = ["TileDataset", "EncoderSpec", "encode_tiles", "extract_slide_features", "extract_features_batch",
           "load_features"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TileReadError(InputError):
    """A tile that could not be read, raised in a DataLoader worker.

    The DataLoader re-raises a worker's exception in the main process as ``type(exc)(traceback text)``,
    which would lose the code and the file. This class writes them into its message in the worker
    (``PATH: PROBLEM [code=CODE]``) and reads them back from the traceback text in the main process.
    """

    _TAIL = re.compile(r"TileReadError: (?P<msg>.*) \[code=(?P<code>[A-Za-z0-9_]+)\]\s*$", re.S)

    def __init__(self, message: str, *, path: str | None = None, code: str | None = None):
        m = self._TAIL.search(message) if path is None and code is None else None
        if m:  # re-raised by the DataLoader: PATH: PROBLEM [code=CODE] is the traceback's last line
            last = m["msg"].strip().splitlines()[-1]
            path, _, message = last.partition(": ") if ": " in last else (None, "", last)
            code = m["code"]
        super().__init__(message, path=path, code=code)

    def __str__(self) -> str:
        return f"{super().__str__()} [code={self.code}]"


class TileDataset(torch.utils.data.Dataset):
    """Tiles of one slide as uint8 tensors ``(3, S, S)``; each worker opens its own slide handle."""

    def __init__(self, slide_path: str, coords: np.ndarray, *, mpp: float, tile_size: int,
                 slide_mpp: float | None = None):
        self.slide_path, self.coords = slide_path, np.asarray(coords)
        self.mpp, self.tile_size, self.slide_mpp = mpp, tile_size, slide_mpp
        self._slide = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            if self._slide is None:
                self._slide = open_slide(self.slide_path, mpp=self.slide_mpp)
            x, y = self.coords[i]
            tile = self._slide.read_mpp((int(x), int(y)), (self.tile_size, self.tile_size), mpp=self.mpp)
        except TileReadError:
            raise
        except MedsegError as exc:  # keep the code and file across the DataLoader worker boundary
            raise TileReadError(exc.problem, path=exc.path or self.slide_path, code=exc.code) from None
        return torch.from_numpy(np.array(tile, dtype=np.uint8)).permute(2, 0, 1)


Prepare = Callable[[torch.nn.Module], Any]   # the built encoder -> what runs it (a backend's callable)


@dataclass
class EncoderSpec:
    """A tile encoder by registry name, with its weights file or, for random weights, the ``seed``
    that initialises it (both None: torch's current random state, for tests)."""

    name: str = "tile_resnet18"
    weights: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int | None = None

    def fingerprint(self) -> str:
        """Identifies encoder + weights content (or random seed) + normalisation, for resuming."""
        h = hashlib.sha256(self.name.encode())
        if self.weights:
            h.update(Path(self.weights).read_bytes())
        elif self.seed is not None:
            h.update(f"random-seed:{self.seed}".encode())
        h.update(json.dumps([list(self.mean), list(self.std)]).encode())
        return h.hexdigest()[:16]

    def build(self, device: torch.device) -> torch.nn.Module:
        from medseg.models.encoders import create_encoder

        if self.weights is None and self.seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return create_encoder(self.name).to(device).eval()
        return create_encoder(self.name, weights=self.weights).to(device).eval()

    def describe(self) -> dict[str, Any]:
        """Metadata of the features: encoder, weights file name or random seed, what it expects."""
        from medseg.models.encoders import TILE_ENCODERS, encoder_info

        try:
            with torch.device("meta"):
                info = encoder_info(TILE_ENCODERS.create(self.name))
        except Exception:  # an encoder that cannot be built on the meta device: sizes unknown
            info = {"feature_dim": None, "input_size": None, "mpp": None}
        return {"encoder": self.name, "encoder_weights": Path(self.weights).name if self.weights else None,
                "encoder_random_seed": self.seed if self.weights is None else None,
                "encoder_input_size": info["input_size"], "encoder_mpp": info["mpp"],
                "normalisation": {"scale": "1/255", "mean": list(self.mean), "std": list(self.std)}}


def normalise(batch_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, scaled to [0, 1] then standardised per channel."""
    x = batch_u8.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def encode_tiles(encoder: torch.nn.Module, loader, *, device: torch.device, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD) -> np.ndarray:
    """Encode every batch of uint8 tiles from ``loader``; returns ``(N, C)`` float32."""
    out = []
    amp = device.type == "cuda"
    for batch in loader:
        x = normalise(batch.to(device, non_blocking=True), mean, std)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            f = encoder(x)
        out.append(f.float().cpu().numpy())
    return np.concatenate(out, 0) if out else np.zeros((0, getattr(encoder, "feature_dim", 0)), np.float32)


def extract_slide_features(slide_path: str, grid: TileGrid, encoder: torch.nn.Module, *, device: torch.device,
                           spec: EncoderSpec, batch_size: int = 64, workers: int = 2,
                           slide_mpp: float | None = None) -> np.ndarray:
    """Features ``(N, C)`` of the tiles of ``grid`` read from ``slide_path``."""
    ds = TileDataset(slide_path, grid.coords, mpp=grid.mpp, tile_size=grid.tile_size, slide_mpp=slide_mpp)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    return encode_tiles(encoder, loader, device=device, mean=spec.mean, std=spec.std)


def save_features(path: Path, feats: np.ndarray, coords: np.ndarray, meta: dict[str, Any]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats.astype(np.float32))
            f.create_dataset("coords", data=coords.astype(np.int64))
            f.attrs["meta"] = json.dumps(meta)


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``features (N, C)``, ``coords (N, 2)`` and metadata of a features file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["features"]), np.asarray(f["coords"]), json.loads(f.attrs["meta"])
    except (OSError, KeyError) as exc:
        raise InputError(f"not a medseg features file: {exc}", path=path, code="bad_features") from None


def _error_row(name: str, exc: MedsegError) -> dict[str, Any]:
    log.error("%s", exc)
    return {"slide": name, "status": status_of(exc), "error": exc.problem}


def plan_slide(name: str, *, tile_root: Path, out_root: Path, fp: str) -> dict[str, Any]:
    """Read one slide's tiling: ``{"row": ...}`` when nothing is to be done (already encoded with the
    same encoder and grid, no tissue, or an error), else ``{"job": ...}`` for :func:`encode_slide`."""
    try:
        grid, meta = load_tiles(safe_join(tile_root, name, "tiles.h5"))
        out = safe_join(out_root, name, "features.h5")
        grid_fp = hashlib.sha256(grid.coords.tobytes() + json.dumps(grid.meta()).encode()).hexdigest()[:16]
        if out.is_file():
            try:
                _, _, old = load_features(out)
                if old.get("encoder_fingerprint") == fp and old.get("grid_fingerprint") == grid_fp:
                    return {"row": {"slide": name, "status": "skipped", "n_tiles": len(grid)}}
            except InputError:
                old = {}
            if old.get("encoder_fingerprint") not in (None, fp):
                raise InputError(f"features were written by another encoder ({old.get('encoder')}, fingerprint "
                                 f"{old.get('encoder_fingerprint')}, this run {fp}); not mixing encoders in one "
                                 "folder: use another output folder or remove it", path=out, code="encoder_mismatch")
        if meta.get("status") == "no_tissue" or len(grid) == 0:
            return {"row": {"slide": name, "status": "no_tissue", "n_tiles": 0}}
        return {"job": {"slide": name, "grid": grid, "meta": meta, "grid_fp": grid_fp}}
    except MedsegError as exc:
        return {"row": _error_row(name, exc)}


def encode_slide(plan: dict[str, Any], encoder: torch.nn.Module, *, device: torch.device, spec: EncoderSpec,
                 batch_size: int = 64, workers: int = 2, slide_mpp: float | None = None) -> dict[str, Any]:
    """The features of a planned slide (tiles read by DataLoader workers), or the plan's row."""
    if "row" in plan:
        return plan
    job = plan["job"]
    t0 = time.perf_counter()
    try:
        feats = extract_slide_features(job["meta"]["slide_path"], job["grid"], encoder, device=device, spec=spec,
                                       batch_size=batch_size, workers=workers, slide_mpp=slide_mpp)
    except MedsegError as exc:
        return {"row": _error_row(job["slide"], exc)}
    return {"job": job, "features": feats, "seconds": time.perf_counter() - t0}


def save_slide(encoded: dict[str, Any], out_root: Path, *, spec: EncoderSpec, fp: str) -> dict[str, Any]:
    """Write ``out_root/<slide>/features.h5`` atomically; returns the slide's report row."""
    if "row" in encoded:
        return encoded["row"]
    job, feats = encoded["job"], encoded["features"]
    grid, name = job["grid"], job["slide"]
    try:
        fmeta = {**job["meta"], **grid.meta(), **spec.describe(), "encoder_fingerprint": fp,
                 "grid_fingerprint": job["grid_fp"], "feature_dim": int(feats.shape[1])}
        save_features(safe_join(out_root, name, "features.h5"), feats, grid.coords, fmeta)
    except MedsegError as exc:
        return _error_row(name, exc)
    dt = encoded["seconds"]
    return {"slide": name, "status": "ok", "n_tiles": len(grid), "seconds": round(dt, 2),
            "tiles_per_s": round(len(grid) / max(dt, 1e-9), 1)}


def _runner(spec: EncoderSpec, device: torch.device, prepare: Prepare | None):
    """The encoder built on ``device``, as ``prepare`` runs it (the module itself without one)."""
    encoder = spec.build(device)
    return prepare(encoder) if prepare is not None else encoder


def _encoder_fn(spec: EncoderSpec, device: str, batch_size: int, workers: int, slide_mpp: float | None,
                prepare: Prepare | None = None):
    """On a Ray actor: build the encoder once; returns the per-slide compute function."""
    from medseg.device import resolve_device

    dev = resolve_device(device)
    encoder = _runner(spec, dev, prepare)

    def compute(_name: str, plan: dict[str, Any]) -> dict[str, Any]:
        return encode_slide(plan, encoder, device=dev, spec=spec, batch_size=batch_size, workers=workers,
                            slide_mpp=slide_mpp)

    return compute


def _save_remote(_name: str, encoded: dict[str, Any], out_root: Path, *, spec: EncoderSpec, fp: str):
    return save_slide(encoded, out_root, spec=spec, fp=fp)


def extract_features_batch(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`_extract_features_batch` holding the output folder's lock (:func:`medseg.fsutil.output_lock`, shared by
    every verb that writes a folder): a second run into the same folder fails with code ``busy``."""
    from medseg.fsutil import output_lock

    out = kwargs["out_root"] if "out_root" in kwargs else args[1]
    with output_lock(out):
        return _extract_features_batch(*args, **kwargs)


def _extract_features_batch(tile_root: Path, out_root: Path, spec: EncoderSpec, *, device: torch.device | str,
                           batch_size: int = 64, workers: int = 2, slides: list[str] | None = None,
                           slide_mpp: float | None = None, executor=None,
                           prepare: Prepare | None = None) -> list[dict[str, Any]]:
    """Encode every tiled slide under ``tile_root`` (``<slide>/tiles.h5``); resumable, per-slide errors.
    ``prepare`` turns the built encoder into what runs it (e.g. an inference backend; picklable for Ray).

    ``executor="ray"``: slides are planned (tiling read, resume check) in Ray CPU tasks, encoded by
    an actor pool (one encoder per actor, a GPU each when the cluster has GPUs; tiles read by the
    actor's DataLoader workers, so a slide's tiles never sit whole in the object store) and
    written by CPU tasks. Rows come back in slide order, as locally.
    """
    from functools import partial

    from medseg.executors import RemoteStages, as_spec

    fp = spec.fingerprint()
    names = slides if slides is not None else sorted(p.parent.name for p in tile_root.glob("*/tiles.h5"))
    ex = as_spec(executor)
    if not ex.is_local:
        from medseg.ray_runner import stream_cases

        stages = RemoteStages(load=partial(plan_slide, tile_root=Path(tile_root), out_root=Path(out_root), fp=fp),
                              compute_factory=partial(_encoder_fn, spec, str(device), batch_size, workers, slide_mpp,
                                                      prepare),
                              write=partial(_save_remote, spec=spec, fp=fp), gpu=str(device).lower() != "cpu")
        got: dict[str, dict[str, Any]] = {}
        for name, row, err in stream_cases([(n, n) for n in names], stages=stages, out_dir=Path(out_root), spec=ex):
            got[name] = row if err is None else {"slide": name, "status": f"error:{err['code']}",
                                                 "error": err["message"]}
        return [got[n] for n in names]
    if isinstance(device, str):
        from medseg.device import resolve_device

        device = resolve_device(device)
    encoder = _runner(spec, device, prepare)
    rows = []
    for name in names:
        plan = plan_slide(name, tile_root=tile_root, out_root=out_root, fp=fp)
        enc = encode_slide(plan, encoder, device=device, spec=spec, batch_size=batch_size, workers=workers,
                           slide_mpp=slide_mpp)
        rows.append(save_slide(enc, out_root, spec=spec, fp=fp))
    return rows
