"""Errors that name the file and the problem, with a short machine-readable code.

The code ends up in per-case status columns (``error:<code>``) of batch outputs.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

# bidirectional controls: they reorder the text around them on screen (U+202E shows "gpj.exe" as "exe.jpg")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: object) -> str:
    """``text`` with control characters (newlines, escapes...) and bidirectional controls written as
    ``\\xNN`` / ``\\uNNNN``, so a hostile file name cannot forge a log line or reorder a CSV cell.

    >>> printable("a\\nb\\u202e.csv")
    'a\\\\nb\\\\u202e.csv'
    """
    s = str(text)
    if s.isprintable() and not _BIDI.intersection(s):
        return s
    out = []
    for ch in s:
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 or ch in "\n\r\t"
                       else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


class MedsegError(Exception):
    """Base error. ``code`` is a short token such as ``truncated`` or ``bad_spacing``."""

    code = "error"

    def __init__(self, message: str, *, path: str | Path | None = None, code: str | None = None):
        self.path = printable(path) if path is not None else None
        if code is not None:
            self.code = code
        self.problem = message
        # escaped: a file name or value holding a newline or a bidi control cannot forge a log line
        super().__init__(f"{self.path}: {printable(message)}" if self.path else printable(message))


class InputError(MedsegError):
    """A file or folder that cannot be used as given (unreadable, corrupt, bad geometry...)."""

    code = "bad_input"


class GeometryMismatchError(MedsegError):
    """Two volumes that must share a voxel grid do not."""

    code = "geometry_mismatch"


class ConfigError(MedsegError):
    """A configuration key or value is invalid; the message names the key."""

    code = "bad_config"


def unpickle_reason(exc: BaseException, *, limit: int = 600) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: torch's own explanation (the
    global it would have had to import, e.g. "unsupported GLOBAL posix.system") without its advice to
    retry with ``weights_only=False``, which would run the file's code."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                     "Re-running", "(1)", "(2)", "In PyTorch"))]
    reason = " ".join(keep) or " ".join(lines)
    reason = f"{exc.__class__.__name__}: {reason}" if reason else exc.__class__.__name__
    return printable(reason[:limit])


def status_of(exc: BaseException) -> str:
    """Status token for a failed case, e.g. ``error:truncated``."""
    code = getattr(exc, "code", None) or type(exc).__name__
    return f"error:{code}"
