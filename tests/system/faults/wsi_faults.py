"""Damaged variants of real whole-slide files (SVS, NDPI): truncations, wrong magic, broken IFD
pointers, and corrupted tile bytes inside the pyramid levels medseg reads.

``make_slide_corpus(out_dir, slides)`` writes every variant and returns one
:class:`faults.generate.FaultCase` per variant (``kind="slide"``). Deterministic (fixed seeds).
Tile data is located with a small TIFF reader written here (classic little-endian TIFF, which is
what SVS and NDPI files of this size are): the byte range of each page's tiles or strips.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tests.system.faults.generate import FaultCase

# codes a correct slide reader may give for a damaged slide (medseg.io.wsi)
SLIDE_CODES = frozenset({"truncated", "unreadable", "unsupported", "read_failed"})
TRUNC_FRACTIONS = (0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999)
TRUNC_BYTES = (4, 16, 200)
MAGICS = {"zeros": b"\0\0\0\0", "zip": b"PK\x03\x04", "gif": b"GIF8", "bigendian": b"MM\0*"}
CORRUPT_AT = (0.2, 0.4, 0.6, 0.8)


def tiff_pages(raw: bytes) -> list[tuple[int, int]]:
    """``(first data byte, last data byte + 1)`` of the tiles/strips of each page of a little-endian TIFF."""
    if raw[:4] != b"II*\0":
        raise ValueError("not a little-endian classic TIFF")
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 16: 8}
    fmt = {3: "H", 4: "I", 16: "Q"}
    pages = []
    ifd = struct.unpack_from("<I", raw, 4)[0]
    while ifd and len(pages) < 64:
        n = struct.unpack_from("<H", raw, ifd)[0]
        tags: dict[int, list[int]] = {}
        for k in range(n):
            tag, typ, count, value = struct.unpack_from("<HHII", raw, ifd + 2 + 12 * k)
            if tag not in (273, 279, 324, 325) or typ not in fmt:
                continue
            size = sizes[typ] * count
            where = ifd + 2 + 12 * k + 8 if size <= 4 else value
            tags[tag] = list(struct.unpack_from(f"<{count}{fmt[typ]}", raw, where))
        offs, counts = tags.get(324) or tags.get(273), tags.get(325) or tags.get(279)
        if offs and counts:
            pages.append((min(offs), max(o + c for o, c in zip(offs, counts))))
        ifd = struct.unpack_from("<I", raw, ifd + 2 + 12 * n)[0]
    return pages


def _slide_variants(raw: bytes, stem: str, suffix: str, seed: int) -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(seed)
    n = len(raw)
    out = [(f"{stem}_trunc_f{f}{suffix}", raw[: max(1, int(n * f))], "slide_truncated") for f in TRUNC_FRACTIONS]
    out += [(f"{stem}_trunc_{b}B{suffix}", raw[:b], "slide_truncated") for b in TRUNC_BYTES]
    out += [(f"{stem}_magic_{k}{suffix}", m + raw[4:], "slide_magic") for k, m in MAGICS.items()]
    for k, ptr in (("past_end", n + 4096), ("zero", 0)):
        b = bytearray(raw)
        struct.pack_into("<I", b, 4, ptr)
        out.append((f"{stem}_ifd_{k}{suffix}", bytes(b), "slide_header"))
    pages = tiff_pages(raw)
    # the full-resolution level, and the next page (a pyramid level in NDPI, a thumbnail image in SVS)
    for page in range(min(2, len(pages))):
        lo, hi = pages[page]
        for f in CORRUPT_AT:
            at = lo + int((hi - lo) * f)
            b = bytearray(raw)
            b[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            out.append((f"{stem}_p{page}_random_{f}{suffix}", bytes(b), "slide_tiles"))
            b = bytearray(raw)
            b[at:at + 512] = bytes(512)
            out.append((f"{stem}_p{page}_zeros_{f}{suffix}", bytes(b), "slide_tiles"))
    return out


def make_slide_corpus(out: Path, slides: list[Path], select=None) -> list[FaultCase]:
    """Write the variants of every slide in ``slides`` under ``out`` (only names ``select(name)`` accepts)."""
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, s in enumerate(slides):
        stem = s.stem.replace("-", "_")
        for name, data, family in _slide_variants(s.read_bytes(), stem, s.suffix, seed=100 + i):
            if select is not None and not select(name):
                continue
            p = out / name
            p.write_bytes(data)
            cases.append(FaultCase(p, family, "slide", SLIDE_CODES, ref=s))
    return cases
