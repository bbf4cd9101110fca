"""Resource caps checked at the boundary, before memory is spent: the one place they are defined.

A crafted file can claim (in its header) or inflate to (through gzip) far more memory than it
takes on disk: a 16 MB ``.nii.gz`` of zeros inflates to 16 GiB. Every reader checks the size a
header describes with :func:`check_size` *before* inflating anything, and inflates gzip data with
:func:`gunzip_capped`, which stops as soon as the output passes the cap. A refused input raises
``InputError(code="too_large")`` naming the file, the size and how to raise the cap.

Caps (generous for medical volumes: a 512 x 512 x 2000 CT of int16 is 1 GiB):

==========================  ======================  ===========================================
environment variable        default                 what
==========================  ======================  ===========================================
``MEDSEG_MAX_BYTES``        ``2G`` (2 GiB)          decompressed bytes of one image / slide
``MEDSEG_MAX_VOXELS``       ``536870912`` (2^29)    voxels (pixels for a slide image) of one input
==========================  ======================  ===========================================

Sizes accept ``K``, ``M``, ``G``, ``T`` suffixes (powers of 1024). The values are read when a
check runs, so a test or a long-lived process may change them with :func:`override`.

>>> check_size(voxels=10, nbytes=40, what="volume")     # fine: returns None
>>> parse_size("1.5K")
1536
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import InputError

DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_VOXELS = 1 << 29
BYTES_ENV = "MEDSEG_MAX_BYTES"
VOXELS_ENV = "MEDSEG_MAX_VOXELS"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_CHUNK = 1 << 22  # most bytes zlib may produce per step
_IN_CHUNK = 1 << 16  # compressed bytes fed to zlib per step


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_voxels: int


def parse_size(text: str) -> int:
    """``'2G'`` -> 2147483648; a plain number is bytes. Raises ValueError for anything else or <= 0."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    num = float(t[: len(t) - len(unit)] if unit else t)
    value = int(num * _UNITS[unit])
    if not value > 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def _env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_size(raw)
    except ValueError:
        from medseg.errors import ConfigError

        raise ConfigError(f"${name}={raw!r} is not a positive size (e.g. 4G, 800M or a number of bytes)",
                          code="bad_limit") from None


def limits() -> Limits:
    """The caps in force (environment, else the defaults)."""
    return Limits(_env(BYTES_ENV, DEFAULT_MAX_BYTES), _env(VOXELS_ENV, DEFAULT_MAX_VOXELS))


@contextmanager
def override(*, max_bytes: int | None = None, max_voxels: int | None = None) -> Iterator[Limits]:
    """Temporarily set the caps (through the environment, so worker processes see them too)."""
    old = {k: os.environ.get(k) for k in (BYTES_ENV, VOXELS_ENV)}
    try:
        if max_bytes is not None:
            os.environ[BYTES_ENV] = str(int(max_bytes))
        if max_voxels is not None:
            os.environ[VOXELS_ENV] = str(int(max_voxels))
        yield limits()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def check_size(*, voxels: int, nbytes: int, what: str = "image", path: str | Path | None = None) -> None:
    """Raise ``InputError(code="too_large")`` when ``voxels`` or ``nbytes`` (as a header describes
    them, before anything is read) exceed the caps."""
    lim = limits()
    if voxels > lim.max_voxels:
        raise InputError(f"the {what} has {voxels:,} voxels, more than the limit of {lim.max_voxels:,} "
                         f"(raise ${VOXELS_ENV} if it is genuine)", path=path, code="too_large")
    if nbytes > lim.max_bytes:
        raise InputError(f"the {what} needs {_human(nbytes)} in memory, more than the limit of "
                         f"{_human(lim.max_bytes)} (raise ${BYTES_ENV} if it is genuine)", path=path,
                         code="too_large")


def gunzip_capped(raw: bytes, *, path: str | Path | None = None, cap: int | None = None,
                  wbits: int = 16 + zlib.MAX_WBITS) -> bytes:
    """Decompress one gzip (``wbits=31``) or zlib (``wbits=15``) stream, refusing to produce more
    than ``cap`` bytes (default: ``MEDSEG_MAX_BYTES``): the output never grows past the cap plus
    one step, whatever the stream claims. Checks the CRC and length like :func:`gzip.decompress`.

    Raises ``EOFError`` for a stream that ends early, ``zlib.error`` for corrupt data and
    ``InputError(code="too_large")`` past the cap.
    """
    out, extra = gunzip_stream(raw, path=path, cap=cap, wbits=wbits)
    if wbits > zlib.MAX_WBITS and extra.strip(b"\x00"):
        raise zlib.error(f"not a gzipped file after the first member ({bytes(extra[:2])!r})")
    return out


def gunzip_stream(raw: bytes, *, path: str | Path | None = None, cap: int | None = None,
                  wbits: int = 16 + zlib.MAX_WBITS) -> tuple[bytes, bytes]:
    """:func:`gunzip_capped` that also returns the bytes after the end of the first stream.
    Further gzip members (``cat a.gz b.gz``) are inflated too, as gzip does."""
    limit = limits().max_bytes if cap is None else int(cap)
    parts: list[bytes] = []
    total = 0
    data = bytes(raw)
    while True:
        d = zlib.decompressobj(wbits)
        pos = 0
        while not d.eof and pos < len(data):
            tail = data[pos:pos + _IN_CHUNK]  # small input steps: unconsumed_tail copies stay small
            pos += len(tail)
            while True:
                # max_length bounds each step's output, so a block of a bomb cannot explode at once
                chunk = d.decompress(tail, _CHUNK)
                total += len(chunk)
                _over(total, limit, path)
                parts.append(chunk)
                tail = d.unconsumed_tail
                if d.eof or (not tail and len(chunk) < _CHUNK):
                    break
        if not d.eof:
            raise EOFError("compressed stream ends early")
        rest = d.unused_data + data[pos:]
        if wbits > zlib.MAX_WBITS and rest[:2] == b"\x1f\x8b":
            data = rest
            continue
        return b"".join(parts), rest


@contextmanager
def open_image(path: str | Path, *, what: str = "image", bytes_per_pixel: int | None = None) -> Iterator[Any]:
    """``PIL.Image.open(path)`` within the caps: PIL's decompression-bomb guard stays on, tied to
    :func:`limits` (PIL warns above ``MAX_IMAGE_PIXELS`` and refuses above twice that; the warning
    is an error here), and the size from the header is checked with :func:`check_size` before
    anything is decoded (``bytes_per_pixel``: as decoded, default the image's band count). Either
    refusal is ``InputError(code="too_large")`` naming the file; other PIL errors pass through."""
    import warnings

    from PIL import Image

    cap = limits()
    Image.MAX_IMAGE_PIXELS = min(cap.max_voxels, cap.max_bytes // 3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                check_size(voxels=w * h, nbytes=w * h * (bytes_per_pixel or max(1, len(im.getbands()))), what=what,
                           path=path)
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{what} too large ({exc})", path=path, code="too_large") from None


#: bytes a stream may hold beyond what its header describes before inflating stops
HEADER_SLACK = 1 << 20


def gunzip_described(raw: bytes, *, described: int, path: str | Path | None = None,
                     wbits: int = 16 + zlib.MAX_WBITS) -> tuple[bytes, bytes]:
    """Inflate the voxel data of an image whose header describes ``described`` bytes: never more
    than :data:`HEADER_SLACK` past that (beyond it the header is wrong: ``InputError(code="bad_header")``).
    gzip (``wbits=31``) is checked as :func:`gunzip_capped` and returns no rest; zlib (``wbits=15``)
    returns the bytes after the stream as :func:`gunzip_stream`."""
    try:
        if wbits > zlib.MAX_WBITS:
            return gunzip_capped(raw, path=path, cap=described + HEADER_SLACK, wbits=wbits), b""
        return gunzip_stream(raw, path=path, cap=described + HEADER_SLACK, wbits=wbits)
    except InputError as exc:
        if exc.code != "too_large":
            raise
        raise InputError(f"compressed voxel data inflates to more than the {described:,} bytes the header "
                         "describes (more than 1 MiB extra): sizes or voxel type in the header are wrong",
                         path=path, code="bad_header") from None


def _over(total: int, limit: int, path) -> None:
    if total > limit:
        raise InputError(f"compressed data inflates to more than the limit of {_human(limit)} (a decompression "
                         f"bomb, or a genuine image larger than ${BYTES_ENV} allows)", path=path, code="too_large")


def require_regular_file(path: str | Path, *, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks to one are followed); otherwise an InputError.
    A FIFO, socket or device named like an image would block or never end when read."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"no such {what}", path=p, code="missing") from None
    except OSError as exc:
        raise InputError(f"cannot access the {what} ({exc.strerror or exc})", path=p, code="unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
        raise InputError(f"is {kind}, not a regular {what}", path=p, code="not_a_file")
    return p
