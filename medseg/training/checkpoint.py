"""Checkpoints of a training run inside its model bundle.

Weights go to safetensors (``last.safetensors``, ``model.safetensors`` for the best epoch); the
rest of the state (optimiser, grad scaler, RNG, epoch, history, best score) is a dict of plain
tensors, numbers and strings saved with ``torch.save`` and read back with ``weights_only=True``,
so loading never runs pickled code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medseg.bundle import WEIGHTS
from medseg.errors import InputError
from medseg.fsutil import atomic_path
from medseg.weights import load_state_into, load_weights, save_weights

log = logging.getLogger("medseg.training")

STATE_FILE = "train_state.pt"


def save_checkpoint(bundle_dir: Path, *, model_state: dict, architecture: str, optimizer, scaler,
                    epoch: int, history: list[dict], best: dict[str, Any], is_best: bool,
                    config_digest: str) -> None:
    """Write ``last.safetensors`` (+ ``model.safetensors`` when ``is_best``) and ``train_state.pt``.

    ``epoch`` is the number of finished epochs. The weights are written before the state, so a
    crash in between leaves a state that points at the previous epoch's consistent pair or a
    newer weights file, which :func:`load_checkpoint` detects via the epoch stamp.
    """
    save_weights(model_state, bundle_dir / WEIGHTS["last"], architecture=architecture,
                 extra={"epoch": str(epoch)})
    if is_best:
        save_weights(model_state, bundle_dir / WEIGHTS["best"], architecture=architecture,
                     extra={"epoch": str(epoch)})
    state = {
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": history,
        "best": best,
        "config_digest": config_digest,
    }
    with atomic_path(bundle_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)


def state_digest(state: dict) -> str:
    """SHA-256 (first 16 hex digits) over the names and exact bytes of a state dict's tensors."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def load_checkpoint(bundle_dir: Path, *, model, architecture: str, optimizer, scaler) -> dict[str, Any]:
    """Restore weights, optimiser, scaler and RNG from a bundle; returns the state dict.

    Raises InputError for a missing, damaged or mismatching checkpoint.
    """
    spath = bundle_dir / STATE_FILE
    if not spath.is_file():
        raise InputError(f"no {STATE_FILE} to resume from", path=bundle_dir, code="missing")
    try:
        state = torch.load(spath, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of every kind: refuse, never fall back to full pickle
        from medseg.errors import unpickle_reason

        raise InputError(f"training state is damaged or not a medseg checkpoint ({unpickle_reason(exc)}); it is "
                         "never loaded with weights_only=False", path=spath, code="corrupt") from None
    if not isinstance(state, dict) or not {"epoch", "optimizer", "torch_rng", "history"} <= set(state):
        raise InputError("training state lacks epoch/optimizer/RNG entries", path=spath, code="corrupt")
    wpath = bundle_dir / WEIGHTS["last"]
    weights, fmeta = load_weights(wpath)
    if fmeta.get("architecture") and fmeta["architecture"] != architecture:
        raise InputError(f"checkpoint is of architecture '{fmeta['architecture']}', the config names "
                         f"'{architecture}'", path=wpath, code="wrong_architecture")
    if fmeta.get("epoch") is not None and int(fmeta["epoch"]) != int(state["epoch"]):
        raise InputError(f"weights (epoch {fmeta['epoch']}) and training state (epoch {state['epoch']}) differ: "
                         "the run was interrupted while saving; restart without --resume", path=wpath,
                         code="inconsistent")
    load_state_into(model, weights, path=wpath, architecture=architecture)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"optimiser state does not fit this model/optimiser ({exc})", path=spath,
                         code="wrong_architecture") from None
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.info("resumed from %s after epoch %d", bundle_dir, state["epoch"])
    return state
