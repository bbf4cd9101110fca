"""Checks SimpleITK does not make on MetaImage / NRRD files, so damage is an error, not wrong voxels.

* MetaIO accepts ``ElementSpacing`` <= 0 (it flips the axis), a ``DimSize`` of 0 and unparseable
  numbers (``nan`` becomes 0) without complaint: :func:`check_meta_header` refuses them.
* MetaIO and teem's NRRD reader print "Uncompress failed" or nothing at all, and return garbage
  voxels, for a damaged or short zlib/gzip stream: :func:`verify_local_stream` decompresses the
  attached stream with checksums (and a running cap, :mod:`medseg.limits`) and compares its
  length with the image size.
* A detached header (``.mhd`` ``ElementDataFile``, ``.nhdr`` ``data file``) may name any file:
  ``/etc/passwd`` or ``../secret.raw``. :func:`check_detached_data` requires every data file to be
  a regular file lying beside its header (same folder, symlinks resolved).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

from medseg.errors import InputError

_META_FLOATS = {"elementspacing": "positive", "elementsize": "positive", "offset": "finite", "origin": "finite",
                "position": "finite", "transformmatrix": "finite", "rotation": "finite", "orientation": "finite",
                "centerofrotation": "finite"}
_HEAD_BYTES = 1 << 16


def _meta_header(data: bytes) -> tuple[dict[str, str], int] | None:
    """(lower-case key -> value, offset of the data) for a MetaImage header; None if not found."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            return None
        line = data[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":
            return fields, pos
    return None


def check_meta_header(path: Path) -> None:
    """Refuse MetaImage headers with non-positive spacing, zero sizes or unparseable numbers."""
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    parsed = _meta_header(head)
    if parsed is None:
        return  # SimpleITK reports what is wrong
    fields, _ = parsed
    for key, rule in _META_FLOATS.items():
        if key not in fields:
            continue
        try:
            vals = [float(v) for v in fields[key].split()]
        except ValueError:
            vals = [math.nan]
        if not all(math.isfinite(v) for v in vals):
            code = "bad_spacing" if rule == "positive" else "bad_geometry"
            raise InputError(f"header field {key} = '{fields[key]}' holds a non-numeric or non-finite value",
                             path=path, code=code)
        if rule == "positive" and any(v <= 0 for v in vals):
            raise InputError(f"voxel spacing must be positive, header says {key} = {fields[key]} (ITK would "
                             "silently flip the axis); fix the header", path=path, code="bad_spacing")
    if "dimsize" in fields:
        try:
            dims = [int(v) for v in fields["dimsize"].split()]
        except ValueError:
            dims = [0]
        if not dims or any(n <= 0 for n in dims):
            raise InputError(f"header DimSize = '{fields['dimsize']}' must be positive whole numbers", path=path,
                             code="bad_header")


def detached_data_files(path: Path) -> list[str]:
    """The data file names a MetaImage / NRRD header refers to (empty for attached data)."""
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    text = head.decode("latin-1")
    if path.suffix.lower() in (".mha", ".mhd"):
        parsed = _meta_header(head)
        if parsed is None:
            return []
        fields, off = parsed
        value = fields.get("elementdatafile", "")
        if value.upper() == "LOCAL":
            return []
        if value.upper() == "LIST" or value.upper().startswith("LIST "):
            return [ln.strip() for ln in head[off:].decode("latin-1").splitlines() if ln.strip()]
        return [value.split()[0] if "%" in value else value]
    lines = text.split("\n\n", 1)[0].splitlines() if text.startswith("NRRD") else []
    for i, line in enumerate(lines):
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("data file", "datafile"):
            continue
        value = value.lstrip("=").strip()
        if value.upper().startswith("LIST"):
            return [ln.strip() for ln in lines[i + 1:] if ln.strip()]
        return [value.split()[0] if "%" in value else value]
    return []


def check_detached_data(path: Path) -> None:
    """Refuse a detached header whose data file is not a regular file beside it (code ``unsafe_path``)."""
    folder = path.parent.resolve()
    for name in detached_data_files(path):
        if "%" in name:  # a numbered pattern: the folder part must be empty
            target_dir = (path.parent / name).parent.resolve()
            if target_dir != folder:
                raise InputError(f"the header names data files {name!r} outside its own folder; detached data "
                                 "files must lie beside their header", path=path, code="unsafe_path")
            continue
        target = (path.parent / name).resolve()
        if target.parent != folder:
            raise InputError(f"the header names the data file {name!r}, which is not beside it (in {folder}); "
                             "detached data files must lie in the header's folder", path=path, code="unsafe_path")
        if target.exists() and not target.is_file():
            raise InputError(f"the data file {name!r} is not a regular file", path=path, code="not_a_file")


def _nrrd_data_offset(data: bytes) -> tuple[dict[str, str], int] | None:
    end = data.find(b"\n\n")
    if end < 0 or not data.startswith(b"NRRD"):
        return None
    fields = {}
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.lstrip("=").strip()
    return fields, end + 2


def verify_local_stream(path: Path, expected_bytes: int) -> None:
    """For a compressed stream attached to the header (``.mha`` with ``CompressedData = True``,
    ``.nrrd`` with ``encoding: gzip``), check that it decompresses with a valid checksum to exactly
    ``expected_bytes``. Detached data files and uncompressed data are left to SimpleITK."""
    suffix = path.suffix.lower()
    if suffix not in (".mha", ".nrrd"):
        return
    data = path.read_bytes()
    if suffix == ".mha":
        parsed = _meta_header(data)
        if parsed is None:
            return
        fields, off = parsed
        if fields.get("compresseddata", "").lower() != "true" or fields.get("elementdatafile", "").upper() != "LOCAL":
            return
        kind = "zlib"
    else:
        parsed = _nrrd_data_offset(data)
        if parsed is None:
            return
        fields, off = parsed
        if fields.get("encoding", "").lower() not in ("gzip", "gz") or "data file" in fields or "datafile" in fields:
            return
        kind = "gzip"
    stream = data[off:]
    from medseg.limits import gunzip_described

    try:
        raw, extra = gunzip_described(stream, described=expected_bytes, path=path,
                                      wbits=zlib.MAX_WBITS if kind == "zlib" else 16 + zlib.MAX_WBITS)
    except EOFError:
        raise InputError("compressed voxel data ends early: the file is truncated (re-copy it)", path=path,
                         code="truncated") from None
    except (zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise InputError(f"compressed voxel data is corrupt ({exc}); re-copy or re-export the file", path=path,
                         code="corrupt") from None
    if len(raw) < expected_bytes:
        raise InputError(f"voxel data is incomplete: {len(raw)} of {expected_bytes} bytes (the header sizes or "
                         "voxel type do not match the data)", path=path, code="truncated")
    if len(raw) > expected_bytes or extra.strip(b"\x00"):
        raise InputError(f"voxel data holds {len(raw)} bytes but the header describes {expected_bytes} (sizes or "
                         "voxel type in the header are wrong)", path=path, code="bad_header")
