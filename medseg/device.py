"""Resolve the compute device once, at the entry point; library code follows ``tensor.device``."""

from __future__ import annotations

from medseg.errors import ConfigError


def resolve_device(spec: str = "auto"):
    """``'auto'`` -> CUDA when available else CPU; ``'cpu'``; ``'cuda'`` or ``'cuda:N'``."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' asked for, but CUDA is not available here; use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)")
        return dev
    raise ConfigError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")
