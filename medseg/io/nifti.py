"""NIfTI (.nii, .nii.gz) reading and writing with nibabel, (z, y, x) arrays and RAS geometry.

nibabel gives the array as ``(i, j, k)`` with an affine from ``(i, j, k)`` to RAS mm; medseg
stores ``(k, j, i)`` = ``(z, y, x)``, so the affine's first three columns are reversed.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume, affine_to_geometry, check_geometry

_NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGIC = (b"n+2\x00", b"ni2\x00")


def _check_magic(path: Path) -> None:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                head = fh.read(540)
        else:
            with open(path, "rb") as fh:
                head = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read the NIfTI header ({exc.__class__.__name__}: {exc})", path=path,
                         code="corrupt") from None
    if len(head) < 348:
        raise InputError(f"file too short for a NIfTI header ({len(head)} bytes)", path=path, code="truncated")
    if head[344:348] not in _NIFTI1_MAGIC and head[4:8] not in _NIFTI2_MAGIC:
        raise InputError("not a NIfTI file (wrong magic bytes)", path=path, code="bad_magic")


def read_nifti(path: str | Path, *, is_label: bool = False) -> Volume:
    """Read a NIfTI file fully (so truncation is detected now, not later) into a Volume."""
    import nibabel as nib

    path = Path(path)
    _check_magic(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise InputError(f"nibabel cannot parse the header: {exc}", path=path, code="bad_header") from None
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) != 3:
        raise InputError(f"expected a 3D volume, got {len(shape)}D shape {tuple(shape)}", path=path,
                         code="not_3d")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"voxel data is truncated or corrupt ({exc.__class__.__name__}: {exc})", path=path,
                         code="truncated") from None
    if data.ndim == 4:
        data = data[..., 0]
    affine_ijk = _best_affine(img, path)
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    affine_zyx = affine_ijk.copy()
    affine_zyx[:, :3] = affine_ijk[:, [2, 1, 0]]
    try:
        spacing, origin, direction = affine_to_geometry(affine_zyx)
        check_geometry(spacing, direction)
    except ValueError as exc:
        raise InputError(f"bad geometry in header: {exc}", path=path, code="bad_geometry") from None
    return Volume(array, spacing, origin, direction, is_label=is_label, meta={"path": str(path)})


def _best_affine(img, path: Path) -> np.ndarray:
    """sform if set, else qform (as nibabel's ``get_best_affine``), with pixdim checks."""
    hdr = img.header
    zooms = np.asarray(hdr.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"voxel spacing (pixdim) must be finite and positive, got {tuple(zooms.tolist())}",
                         path=path, code="bad_spacing")
    aff = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(aff)):
        raise InputError("affine has non-finite entries", path=path, code="bad_geometry")
    return aff


def write_nifti(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` as NIfTI-1 with sform = qform = its affine (written atomically)."""
    import nibabel as nib

    from medseg.fsutil import atomic_path

    path = Path(path)
    data = np.transpose(vol.array, (2, 1, 0))
    aff = vol.affine
    affine_ijk = aff.copy()
    affine_ijk[:, :3] = aff[:, [2, 1, 0]]
    arr = data
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32) if np.abs(arr).max(initial=0) < 2**31 else arr
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, affine_ijk)
    img.header.set_sform(affine_ijk, code=1)
    img.header.set_qform(affine_ijk, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if vol.is_label:
        img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
