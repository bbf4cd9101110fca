"""Errors that name the file and the problem, with a short machine-readable code.

The code ends up in per-case status columns (``error:<code>``) of batch outputs.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base error. ``code`` is a short token such as ``truncated`` or ``bad_spacing``."""

    code = "error"

    def __init__(self, message: str, *, path: str | Path | None = None, code: str | None = None):
        self.path = str(path) if path is not None else None
        if code is not None:
            self.code = code
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(MedsegError):
    """A file or folder that cannot be used as given (unreadable, corrupt, bad geometry...)."""

    code = "bad_input"


class GeometryMismatchError(MedsegError):
    """Two volumes that must share a voxel grid do not."""

    code = "geometry_mismatch"


class ConfigError(MedsegError):
    """A configuration key or value is invalid; the message names the key."""

    code = "bad_config"


def status_of(exc: BaseException) -> str:
    """Status token for a failed case, e.g. ``error:truncated``."""
    code = getattr(exc, "code", None) or type(exc).__name__
    return f"error:{code}"
