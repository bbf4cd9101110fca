"""NIfTI (.nii, .nii.gz) reading and writing with nibabel, (z, y, x) arrays and RAS geometry.

nibabel gives the array as ``(i, j, k)`` with an affine from ``(i, j, k)`` to RAS mm; medseg
stores ``(k, j, i)`` = ``(z, y, x)``, so the affine's first three columns are reversed.

Reading decompresses the whole file first (checking the gzip CRC and length), so a truncated or
damaged file fails at read time with a precise error code, never later as silently wrong voxels.

Geometry precision
------------------
NIfTI-1 stores the sform and the qform in float32. Writing keeps the affine to float32 precision:
direction cosines to about 1e-7, origins to half a float32 step (< 1e-5 mm for coordinates within
+-256 mm, < 3.1e-5 mm within +-1024 mm). The qform is a quaternion whose first component is
recomputed from the other three on reading, which loses precision near 180-degree rotations; when
the written qform does not reproduce the affine to 1e-5, the writer sets ``qform_code = 0`` so that
every reader (nibabel, ITK, FSL) uses the sform. On reading, the sform wins when its code is set
(nibabel's ``get_best_affine`` rule), then the qform, then the bare pixdim scaling.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume, affine_to_geometry, check_geometry

log = logging.getLogger(__name__)

_NIFTI1_MAGIC = (b"n+1\x00",)
_NIFTI2_MAGIC = (b"n+2\x00",)
_PAIR_MAGIC = (b"ni1\x00", b"ni2\x00")
_QFORM_TOL = 1e-5


# bytes per voxel of the NIfTI datatype codes (for the size check before anything is inflated)
_DT_SIZE = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
            1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _load_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the extension).

    The header is read (inflated) first and the size it describes checked against the caps of
    :mod:`medseg.limits` before the voxel data is inflated; the stream is then inflated with a
    running cap at the described size, so a decompression bomb never reaches memory."""
    from medseg.limits import HEADER_SLACK, check_size, limits, require_regular_file

    require_regular_file(path)
    try:
        size = path.stat().st_size
        if size > limits().max_bytes + HEADER_SLACK:
            check_size(voxels=0, nbytes=size, what="file", path=path)
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror or exc})", path=path, code="unreadable") from None
    if not raw:
        raise InputError("empty file (0 bytes): the file is truncated", path=path, code="truncated")
    if raw[:2] == b"\x1f\x8b":
        with _gzip_errors(path):
            head = _gunzip_head(raw, 540)
        need = _described_bytes(head, path)
        with _gzip_errors(path):
            from medseg.limits import gunzip_described

            return gunzip_described(raw, described=need, path=path)[0]
    if path.name.lower().endswith(".gz"):
        raise InputError("named .gz but not gzip-compressed data", path=path, code="corrupt")
    _described_bytes(raw[:540], path)
    return raw


class _gzip_errors:
    """Map gzip / zlib failures to InputError codes ``truncated`` and ``corrupt``."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        if etype is None or issubclass(etype, InputError):
            return False
        if issubclass(etype, EOFError):
            raise InputError("gzip stream ends early: the file is truncated (re-copy or re-export it)",
                             path=self.path, code="truncated") from None
        if issubclass(etype, (gzip.BadGzipFile, zlib.error, OSError)):
            raise InputError(f"gzip data is corrupt ({exc}); re-copy or re-export the file", path=self.path,
                             code="corrupt") from None
        return False


def _gunzip_head(raw: bytes, n: int) -> bytes:
    """The first ``n`` inflated bytes of a gzip stream (or all of them when it is shorter)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out, pos = b"", 0
    while len(out) < n and not d.eof:
        if d.unconsumed_tail:
            tail = d.unconsumed_tail
        elif pos < len(raw):
            tail, pos = raw[pos:pos + (1 << 16)], pos + (1 << 16)
        else:
            break
        out += d.decompress(tail, n - len(out))
    return out


def _described_bytes(head: bytes, path: Path) -> int:
    """Bytes of a file the header ``head`` describes (offset + voxels x size); refuses a header whose
    sizes pass the caps (code ``too_large``). A header too damaged to tell is left to the full checks."""
    from medseg.limits import check_size

    if len(head) < 348:
        return len(head)
    kind = _header_kind(head, path)
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if kind == "nifti1":
        dim = struct.unpack(endian + "8h", head[40:56])
        dtype_code = struct.unpack(endian + "h", head[70:72])[0]
        offset = struct.unpack(endian + "f", head[108:112])[0]
    else:
        dim = struct.unpack(endian + "8q", head[16:80])
        dtype_code = struct.unpack(endian + "h", head[12:14])[0]
        offset = struct.unpack(endian + "q", head[168:176])[0]
    if not 1 <= dim[0] <= 7 or any(n <= 0 for n in dim[1:dim[0] + 1]):
        return len(head)  # the full header checks say what is wrong
    voxels = 1
    for n in dim[1:dim[0] + 1]:
        voxels *= int(n)
    itemsize = _DT_SIZE.get(int(dtype_code), 1)
    off = int(offset) if offset == offset and 0 <= offset < (1 << 40) else 0
    check_size(voxels=voxels, nbytes=voxels * itemsize, what="volume", path=path)
    return max(off, 348) + voxels * itemsize


def _header_kind(data: bytes, path: Path) -> str:
    if len(data) < 348:
        raise InputError(f"file too short for a NIfTI header ({len(data)} of 348 bytes): truncated", path=path,
                         code="truncated")
    sizeof = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    if 348 in sizeof and data[344:348] in _NIFTI1_MAGIC:
        return "nifti1"
    if 540 in sizeof and data[4:8] in _NIFTI2_MAGIC:
        if len(data) < 540:
            raise InputError(f"file too short for a NIfTI-2 header ({len(data)} of 540 bytes): truncated",
                             path=path, code="truncated")
        return "nifti2"
    if data[344:348] in _PAIR_MAGIC or data[4:8] in _PAIR_MAGIC:
        raise InputError("this is the header of a .hdr/.img pair, not a single-file NIfTI; convert it to .nii.gz",
                         path=path, code="bad_magic")
    raise InputError("not a NIfTI file (wrong header size / magic bytes)", path=path, code="bad_magic")


def _check_raw_header(data: bytes, kind: str, path: Path) -> None:
    """Checks on the raw dim/pixdim fields, before nibabel silently "fixes" them
    (nibabel turns a zero pixdim into 1 and a negative one into its absolute value)."""
    endian = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
    if kind == "nifti1":
        dim = struct.unpack(endian + "8h", data[40:56])
        pixdim = struct.unpack(endian + "8f", data[76:108])
    else:
        dim = struct.unpack(endian + "8q", data[16:80])
        pixdim = struct.unpack(endian + "8d", data[104:168])
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(f"header dim[0] = {ndim} (number of dimensions) must be 1..7", path=path, code="bad_header")
    shape = tuple(int(n) for n in dim[1:ndim + 1])
    if any(n <= 0 for n in shape):
        raise InputError(f"header gives a zero or negative dimension size {shape}", path=path, code="bad_header")
    zooms = np.asarray(pixdim[1:min(ndim, 3) + 1], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"voxel spacing (pixdim) must be finite and positive, got {tuple(zooms.tolist())}; "
                         "fix the header (e.g. nibabel header.set_zooms)", path=path, code="bad_spacing")


def read_nifti(path: str | Path, *, is_label: bool = False, allow_2d: bool = False) -> Volume:
    """Read a NIfTI-1/2 file fully into a Volume (array ``(z, y, x)``, RAS geometry).

    Parameters
    ----------
    path : NIfTI file (``.nii`` or ``.nii.gz``).
    is_label : mark the volume as a label map.
    allow_2d : accept a 2D image (x, y) as one slice ``(1, y, x)`` marked ``meta["ndim"] = 2``
        (2D masks in evaluation); otherwise a 2D file is refused (code ``not_3d``).

    Raises
    ------
    InputError
        codes ``unreadable``, ``truncated``, ``corrupt``, ``bad_magic``, ``bad_header``, ``not_3d``,
        ``bad_spacing``, ``bad_geometry``; the message names the file.
    """
    import nibabel as nib

    path = Path(path)
    data = _load_bytes(path)
    kind = _header_kind(data, path)
    _check_raw_header(data, kind, path)
    klass = nib.Nifti1Image if kind == "nifti1" else nib.Nifti2Image
    try:
        img = klass.from_bytes(data)
        shape = tuple(int(n) for n in img.shape)
        dtype = img.get_data_dtype()
        offset = int(img.dataobj.offset)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise InputError(f"invalid NIfTI header ({exc})", path=path, code="bad_header") from None
    if any(n <= 0 for n in shape):
        raise InputError(f"header gives a zero-size dimension {shape}", path=path, code="bad_header")
    if dtype.fields is not None or dtype.kind == "c":
        raise InputError(f"voxel type {dtype} (RGB/complex) is not a scalar volume", path=path, code="bad_header")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < need:
        raise InputError(f"voxel data is truncated: {len(data)} of {need} bytes present (re-copy the file)",
                         path=path, code="truncated")
    two_d = allow_2d and len(shape) == 2
    shape3 = (shape[0], shape[1], 1) if two_d else _three_d_shape(shape, path)
    if len(data) > need:
        raise InputError(f"the file holds {len(data) - need} bytes more than the header's sizes {shape} and voxel "
                         f"type {dtype} describe: the header does not match the data", path=path, code="bad_header")
    bitpix = _raw_bitpix(data, kind)
    if bitpix != dtype.itemsize * 8:
        raise InputError(f"header bitpix = {bitpix} disagrees with the voxel type {dtype} ({dtype.itemsize * 8} "
                         "bits): the header is damaged", path=path, code="bad_header")
    affine_ijk = _best_affine(img, path)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"cannot decode the voxel data ({exc})", path=path, code="corrupt") from None
    arr = arr.reshape(shape3)
    array = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    affine_zyx = affine_ijk.copy()
    affine_zyx[:, :3] = affine_ijk[:, [2, 1, 0]]
    try:
        spacing, origin, direction = affine_to_geometry(affine_zyx)
        check_geometry(spacing, direction)
    except ValueError as exc:
        hint = ""
        if int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0:
            hint = " (the sform is used; if the qform is right, copy it to the sform, e.g. fslorient -copyqform2sform)"
        raise InputError(f"bad geometry in the header affine: {exc}{hint}", path=path, code="bad_geometry") from None
    hdr = img.header
    meta = {"path": str(path), "format": kind, "sform_code": int(hdr["sform_code"]),
            "qform_code": int(hdr["qform_code"])}
    if two_d:
        meta["ndim"] = 2
    return Volume(array, spacing, origin, direction, is_label=is_label, meta=meta)


def _raw_bitpix(data: bytes, kind: str) -> int:
    endian = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
    return struct.unpack(endian + "h", data[72:74] if kind == "nifti1" else data[14:16])[0]


def _three_d_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise InputError(f"expected a 3D volume, got a {len(shape)}D image of shape {shape}", path=path,
                         code="not_3d")
    if any(n != 1 for n in shape[3:]):
        raise InputError(f"expected a 3D volume, got shape {shape} ({int(np.prod(shape[3:]))} volumes); "
                         "split it into 3D files first", path=path, code="not_3d")
    return shape[0], shape[1], shape[2]


def _best_affine(img, path: Path) -> np.ndarray:
    """sform if its code is set, else qform, else pixdim scaling (nibabel's rule), finite."""
    hdr = img.header
    try:
        aff = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:
        raise InputError(f"cannot build the affine from the header ({exc})", path=path,
                         code="bad_geometry") from None
    if not np.all(np.isfinite(aff)):
        raise InputError("the header affine (sform/qform) has non-finite entries", path=path, code="bad_geometry")
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        log.warning("%s: neither sform nor qform is set; using pixdim spacing with zero origin", path)
    return aff


def _nifti_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype == np.int64 and arr.size and -(2**31) <= arr.min() and arr.max() < 2**31:
        return arr.astype(np.int32)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr


def write_nifti(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` as NIfTI-1 (gzip when the name ends in ``.gz``), atomically.

    The sform (code 1, scanner) holds the affine; the qform holds it too when the quaternion
    reproduces it to 1e-5, otherwise ``qform_code`` is 0 so readers use the sform. Booleans are
    stored as uint8, int64 as int32 when the values fit. Label volumes get intent NIFTI_INTENT_LABEL.
    """
    import nibabel as nib

    from medseg.fsutil import atomic_path

    path = Path(path)
    data = _nifti_array(np.transpose(vol.array, (2, 1, 0)))
    aff = vol.affine
    affine_ijk = aff.copy()
    affine_ijk[:, :3] = aff[:, [2, 1, 0]]
    img = nib.Nifti1Image(data, affine_ijk)
    hdr = img.header
    hdr.set_sform(affine_ijk, code=1)
    hdr.set_qform(affine_ijk, code=1)
    sform32 = hdr.get_sform()
    if not np.allclose(hdr.get_qform(), sform32, atol=_QFORM_TOL, rtol=0):
        log.debug("%s: qform cannot represent the affine to %g; writing qform_code=0", path, _QFORM_TOL)
        hdr.set_qform(affine_ijk, code=0)
    hdr.set_xyzt_units("mm", "sec")
    if vol.is_label:
        hdr.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
