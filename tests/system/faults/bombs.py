"""Hostile inputs made on the fly, small on disk: decompression bombs, lying headers, YAML alias
bombs, slide images that claim billions of pixels, detached headers that point elsewhere.

Every maker writes at most a few hundred KB; what they *claim* (in a header) or *inflate to*
(through gzip) is what a reader must refuse before spending the memory.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def nifti_header(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    """A valid 352-byte NIfTI-1 header (+ 4 extension bytes) for ``shape`` (nibabel's)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms((1.0,) * len(shape))
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\x00" * 4


def gzip_zeros(head: bytes, zeros: int, *, level: int = 9) -> bytes:
    """A gzip stream of ``head`` followed by ``zeros`` zero bytes (about 1000:1 compression)."""
    co = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [co.compress(head)]
    block = bytes(min(zeros, 1 << 22))
    left = zeros
    while left > 0:
        n = min(left, len(block))
        parts.append(co.compress(block[:n]))
        left -= n
    parts.append(co.flush())
    return b"".join(parts)


def nifti_bomb(path: Path, *, claimed: tuple[int, int, int], inflated: int) -> Path:
    """``.nii.gz`` whose header claims ``claimed`` float32 voxels and whose stream inflates to ``inflated``
    bytes of voxel data (zeros)."""
    path.write_bytes(gzip_zeros(nifti_header(claimed), inflated))
    return path


def nrrd_bomb(path: Path, *, claimed: tuple[int, int, int], inflated: int) -> Path:
    """Attached gzip NRRD: header claims ``claimed`` (x, y, z) float voxels; the stream holds ``inflated`` bytes."""
    head = (f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
            f"sizes: {claimed[0]} {claimed[1]} {claimed[2]}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
            "kinds: domain domain domain\nendian: little\nencoding: gzip\nspace origin: (0,0,0)\n\n").encode()
    path.write_bytes(head + gzip_zeros(b"", inflated))
    return path


def mha_zlib_bomb(path: Path, *, claimed: tuple[int, int, int], inflated: int) -> Path:
    """Attached zlib MetaImage (.mha, CompressedData = True) with a lying DimSize or a bomb stream."""
    co = zlib.compressobj(9)
    block = bytes(min(inflated, 1 << 22))
    parts, left = [], inflated
    while left > 0:
        n = min(left, len(block))
        parts.append(co.compress(block[:n]))
        left -= n
    body = b"".join(parts) + co.flush()
    head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = True\nCompressedDataSize = {len(body)}\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
            "Offset = 0 0 0\nElementSpacing = 1 1 1\n"
            f"DimSize = {claimed[0]} {claimed[1]} {claimed[2]}\nElementType = MET_FLOAT\n"
            "ElementDataFile = LOCAL\n").encode()
    path.write_bytes(head + body)
    return path


def mhd_pointing_to(path: Path, data_file: str, shape=(4, 4, 4)) -> Path:
    """A detached MetaImage header whose ElementDataFile is ``data_file`` (e.g. ``/etc/passwd``)."""
    path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                    "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                    f"ElementSpacing = 1 1 1\nDimSize = {shape[0]} {shape[1]} {shape[2]}\nElementType = MET_UCHAR\n"
                    f"ElementDataFile = {data_file}\n")
    return path


def nhdr_pointing_to(path: Path, data_file: str, shape=(4, 4, 4)) -> Path:
    """A detached NRRD header (``.nhdr``) whose ``data file:`` is ``data_file``."""
    path.write_text(f"NRRD0004\ntype: uchar\ndimension: 3\nspace: left-posterior-superior\n"
                    f"sizes: {shape[0]} {shape[1]} {shape[2]}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
                    f"kinds: domain domain domain\nencoding: raw\nspace origin: (0,0,0)\ndata file: {data_file}\n\n")
    return path


def png_bomb(path: Path, *, width: int, height: int) -> Path:
    """A greyscale PNG of ``width`` x ``height`` zero pixels written row by row (a few hundred KB for
    30000 x 30000): the header claims the size, the IDAT stream is all zeros."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    co = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + pixels
    idat = b"".join(co.compress(row) for _ in range(height)) + co.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def yaml_alias_bomb(levels: int = 9, width: int = 10) -> str:
    """"Billion laughs": ``width ** levels`` items from ``levels + 1`` short lines."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def yaml_deep(depth: int = 20_000) -> str:
    """``depth`` nested flow sequences: ``[[[...]]]``."""
    return "[" * depth + "]" * depth
