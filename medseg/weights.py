"""Weights files: a state dict as safetensors (loading never runs pickled code), stored as float32,
float16 or int8 with per-output-channel scales (``medseg export --weights-dtype``); reading gives
float32 tensors back whatever the storage, and a file that does not fit a model is an
:class:`~medseg.errors.InputError` naming the file and the mismatch.

Used by bundles (:mod:`medseg.bundle`) and training checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.fsutil import atomic_path

#: format tag written into every weights file's metadata and every bundle.yaml
BUNDLE_FORMAT = "medseg-bundle/1"
#: how a weights file may store its floating-point tensors (``medseg export --weights-dtype``)
STORAGE = ("float32", "float16", "int8")
_SCALE = ".__int8_scale"      # key suffix of the per-output-channel scales of an int8-stored tensor


def quantize_int8(w) -> tuple[Any, Any]:
    """Symmetric per-output-channel int8 of a weight tensor (dim 0 = output channels):
    ``q = round(w / s)``, ``s = max|w| / 127`` per channel (1 where a channel is all zero); returns
    ``(q int8, s float32 of shape (C,))``. ``q * s`` differs from ``w`` by at most ``s / 2``."""
    import torch

    flat = w.detach().to("cpu", torch.float32).reshape(w.shape[0], -1)
    s = flat.abs().amax(dim=1) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round(flat / s[:, None]), -127, 127).to(torch.int8).reshape(w.shape)
    return q, s


def _stored(state: dict, storage: str) -> dict:
    """The tensors to write for ``storage``: float32 as is; float16 halves every floating tensor;
    int8 stores conv/linear weights (2+ dims) as int8 + per-channel scales and the small
    1-dimensional ones (biases, norm parameters) as float16."""
    import torch

    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if storage == "float32" or not v.is_floating_point():
            out[k] = v
        elif storage == "int8" and v.ndim >= 2:
            out[k], out[k + _SCALE] = quantize_int8(v)
        else:
            out[k] = v.to(torch.float16)
    return out


def _restored(tensors: dict, storage: str, path: Path) -> dict:
    """float32 tensors back from what :func:`_stored` wrote (``storage`` from the file's metadata)."""
    import torch

    if storage == "float32":
        return tensors
    if storage not in STORAGE:
        raise InputError(f"weights stored as {storage!r}, which this medseg cannot read (known: {STORAGE})",
                         path=path, code="corrupt")
    out = {}
    for k, v in tensors.items():
        if k.endswith(_SCALE):
            continue
        if v.dtype == torch.int8 and k + _SCALE in tensors:
            s = tensors[k + _SCALE].to(torch.float32)
            out[k] = v.to(torch.float32) * s.reshape(-1, *([1] * (v.ndim - 1)))
        elif v.is_floating_point():
            out[k] = v.to(torch.float32)
        else:
            out[k] = v
    return out


def save_weights(state_dict: dict, path: str | Path, *, architecture: str | None = None,
                 extra: dict[str, str] | None = None, storage: str = "float32") -> Path:
    """Write a state dict as safetensors, atomically (tensors copied to contiguous CPU memory).

    ``architecture`` and ``extra`` (strings) go into the file's metadata header. ``storage``
    (:data:`STORAGE`): ``float16`` or ``int8`` (per-output-channel) make smaller files for shipping;
    :func:`load_weights` gives float32 tensors back whatever the storage.
    """
    from safetensors.torch import save_file

    tensors = {k: v.contiguous().clone() for k, v in _stored(state_dict, storage).items()}
    meta = {"format": BUNDLE_FORMAT}
    if storage != "float32":
        meta["storage"] = storage
    if architecture:
        meta["architecture"] = architecture
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_weights(path: str | Path) -> tuple[dict, dict[str, str]]:
    """Read a safetensors file -> (state dict of CPU tensors, its string metadata)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError("weights file is missing", path=p, code="missing")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError... for damaged files
        raise InputError(f"not a readable safetensors file ({exc.__class__.__name__}: {exc}); the file is "
                         "damaged or of another format - retrain or copy it again", path=p, code="corrupt") from None
    return _restored(tensors, meta.get("storage", "float32"), p), meta


def state_mismatch(own: dict, state: dict, *, optional: tuple[str, ...] = ()) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own``, in one line ("" when it
    fits): keys missing from the file (those ending in one of ``optional`` excepted), keys the model does
    not have, and tensors of another shape, each with up to three examples."""
    missing = sorted(k for k in set(own) - set(state) if not (optional and k.endswith(optional)))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) e.g. {'; '.join(shapes[:3])}")
    return "; ".join(parts)


def load_state_into(model, state: dict, *, path: str | Path, architecture: str = "?") -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable error for another architecture."""
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise InputError(f"weights do not fit model '{architecture}' ({problem}): the checkpoint is "
                         "from another architecture or configuration", path=path, code="wrong_architecture")
    model.load_state_dict(state, strict=True)
