"""NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd) reading and writing with SimpleITK.

SimpleITK's ``GetArrayFromImage`` is already ``(z, y, x)``. ITK works in LPS world coordinates
and stores the direction row-major with column ``j`` = ITK axis ``j`` (x, y, z); medseg is RAS with
direction columns = array axes (z, y, x). So ``origin_ras = F @ origin_lps`` and
``direction_ras = F @ D_itk[:, ::-1]`` with ``F = diag(-1, -1, 1)`` (flip of the first two world
coordinates), and spacing is reversed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume, check_geometry

LPS_RAS = np.diag([-1.0, -1.0, 1.0])


def sitk_to_volume(img, *, is_label: bool = False, path: str | Path | None = None) -> Volume:
    """Convert a 3D scalar ``SimpleITK.Image`` to a Volume (LPS -> RAS)."""
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB); "
                         "expected a scalar 3D volume", path=path, code="not_3d")
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        size = list(img.GetSize())
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
    elif dim != 3:
        raise InputError(f"expected a 3D volume, got a {dim}D image of size {img.GetSize()}", path=path,
                         code="not_3d")
    spacing_xyz = np.asarray(img.GetSpacing(), dtype=np.float64)
    if not np.all(np.isfinite(spacing_xyz)) or np.any(spacing_xyz <= 0):
        raise InputError(f"voxel spacing must be finite and positive, got {tuple(spacing_xyz.tolist())}",
                         path=path, code="bad_spacing")
    d_lps = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    o_lps = np.asarray(img.GetOrigin(), dtype=np.float64)
    direction = LPS_RAS @ d_lps[:, ::-1]
    origin = LPS_RAS @ o_lps
    spacing = tuple(spacing_xyz[::-1].tolist())
    if not np.all(np.isfinite(origin)):
        raise InputError("origin has non-finite entries", path=path, code="bad_geometry")
    try:
        check_geometry(spacing, direction)
    except ValueError as exc:
        raise InputError(f"bad geometry: {exc}", path=path, code="bad_geometry") from None
    array = sitk.GetArrayFromImage(img)
    return Volume(array, spacing, tuple(origin.tolist()), direction, is_label=is_label,
                  meta={"path": str(path) if path is not None else None})


def volume_to_sitk(vol: Volume):
    """Convert a Volume to a ``SimpleITK.Image`` (RAS -> LPS). Booleans become uint8."""
    import SimpleITK as sitk

    arr = vol.array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    img.SetSpacing(tuple(float(s) for s in vol.spacing_mm[::-1]))
    img.SetOrigin(tuple((LPS_RAS @ np.asarray(vol.origin_mm)).tolist()))
    d_lps = LPS_RAS @ vol.direction[:, ::-1]
    img.SetDirection(tuple(d_lps.reshape(-1).tolist()))
    return img


def _classify_itk_error(msg: str, path: Path) -> tuple[str, str]:
    """(code, explanation) for a SimpleITK read failure."""
    low = msg.lower()
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    detail = (lines[-1] if lines else "unknown error")[:300]
    if "unable to determine imageio" in low or "could not create io object" in low:
        return "bad_magic", "not a readable NRRD/MetaImage file (unknown header)"
    if any(k in low for k in ("short read", "premature", "truncat", "not enough", "end of file",
                              "but received", "bytes but only", "fread got only")):
        return "truncated", f"voxel data is incomplete ({detail}); re-copy the file"
    if "spacing" in low:
        return "bad_spacing", f"invalid voxel spacing in the header ({detail})"
    if "direction" in low or "singular" in low:
        return "bad_geometry", f"invalid direction cosines in the header ({detail})"
    if "gzip" in low or "zlib" in low or "inflate" in low:
        return "corrupt", f"compressed voxel data is corrupt ({detail})"
    if path.suffix.lower() in (".mha", ".mhd") and "file cannot be read" in low and _has_meta_header(path):
        # MetaIO parses the header, then fails reading the elements (it prints "data not read
        # completely" on stderr and reports a stale errno): the data part is short or damaged.
        return "truncated", "the header is fine but the voxel data could not be read completely (truncated or " \
                            "corrupt data); re-copy the file"
    return "unreadable", f"SimpleITK cannot read it: {detail}"


def _has_meta_header(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"DimSize" in head and b"ElementDataFile" in head


def read_itk(path: str | Path, *, is_label: bool = False) -> Volume:
    """Read an NRRD/MHA/MHD file into a Volume (array ``(z, y, x)``, RAS geometry).

    Raises InputError (codes ``unreadable``, ``truncated``, ``bad_magic``, ``not_3d``,
    ``bad_spacing``, ``bad_geometry``) naming the file.
    """
    import SimpleITK as sitk

    from medseg.limits import require_regular_file

    path = require_regular_file(Path(path))
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes): the file is truncated", path=path, code="truncated")
    from medseg.io.itk_checks import check_detached_data, check_meta_header, verify_local_stream

    if path.suffix.lower() in (".mha", ".mhd"):
        check_meta_header(path)
    check_detached_data(path)
    _check_described_size(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        code, why = _classify_itk_error(str(exc), path)
        raise InputError(why, path=path, code=code) from None
    if 0 in img.GetSize():
        raise InputError(f"image size {img.GetSize()} has a zero dimension", path=path, code="bad_header")
    vol = sitk_to_volume(img, is_label=is_label, path=path)
    verify_local_stream(path, int(vol.array.nbytes) * img.GetNumberOfComponentsPerPixel())
    return vol


def _check_described_size(path: Path) -> None:
    """The header's sizes and voxel type against the caps (:mod:`medseg.limits`), before any voxel is read."""
    import SimpleITK as sitk

    from medseg.limits import check_size

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # ReadImage below reports what is wrong, with the error codes of _classify_itk_error
    voxels = 1
    for n in reader.GetSize():
        voxels *= int(n)
    comps = int(reader.GetNumberOfComponents() or 1)
    itemsize = int(sitk.Image(1, 1, reader.GetPixelID()).GetSizeOfPixelComponent()) if comps == 1 else 8
    check_size(voxels=voxels * comps, nbytes=voxels * comps * itemsize, what="image", path=path)


def write_itk(vol: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``vol`` as NRRD/MHA/MHD (format from the extension), atomically.

    Detached-header formats (``.mhd``, ``.nhdr``) are written into a temporary folder beside the
    target under their final names, then the data file and finally the header are moved in.
    """
    import SimpleITK as sitk

    from medseg.fsutil import atomic_path

    path = Path(path)
    img = volume_to_sitk(vol)
    if path.suffix.lower() in (".mhd", ".nhdr"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            sitk.WriteImage(img, str(tmpdir / path.name), compress)
            header = tmpdir / path.name
            for f in sorted(tmpdir.iterdir()):
                if f != header:
                    os.replace(f, path.parent / f.name)
            os.replace(header, path)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)
    return path
