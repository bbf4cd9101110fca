"""Volume I/O with exact geometry. Axis and orientation conversion happens only in this package.

``read_volume(path)`` picks the reader by extension (NIfTI with nibabel; NRRD/MHA/MHD and DICOM
series folders with SimpleITK/pydicom); ``write_volume(vol, path)`` writes atomically.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import InputError
from medseg.volume import Volume

NIFTI_EXT = (".nii.gz", ".nii")
ITK_EXT = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_EXT = NIFTI_EXT + ITK_EXT


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_EXT):
        return "nifti"
    if name.endswith(ITK_EXT):
        return "itk"
    if name.endswith(".dcm"):
        return "dicom"
    return "unknown"


def read_volume(path: str | Path, *, is_label: bool = False, series_uid: str | None = None) -> Volume:
    """Read a NIfTI file, an ITK file (NRRD/MHA/MHD) or a DICOM series folder into a Volume.

    Raises InputError naming the file and the problem for anything unreadable or inconsistent.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p, code="missing")
    kind = _kind(p)
    if kind == "nifti":
        from medseg.io.nifti import read_nifti

        vol = read_nifti(p, is_label=is_label)
    elif kind == "itk":
        from medseg.io.itk import read_itk

        vol = read_itk(p, is_label=is_label)
    elif kind == "dicom":
        from medseg.io.dicom import read_dicom_series

        vol = read_dicom_series(p, is_label=is_label, series_uid=series_uid)
    else:
        raise InputError(f"unknown image format (supported: {', '.join(VOLUME_EXT)}, DICOM folders)", path=p,
                         code="unknown_format")
    return vol


def write_volume(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` to ``path`` (format from the extension), atomically."""
    p = Path(path)
    kind = _kind(p) if not p.is_dir() else "dicom"
    if kind == "nifti":
        from medseg.io.nifti import write_nifti

        return write_nifti(vol, p)
    if kind == "itk":
        from medseg.io.itk import write_itk

        return write_itk(vol, p)
    raise InputError(f"cannot write this format (use {', '.join(VOLUME_EXT)})", path=p, code="unknown_format")


def list_cases(path: str | Path) -> list[Path]:
    """The volumes under ``path``: the file itself, or every volume file / DICOM folder in a folder
    (sorted, non-recursive; hidden and temporary files ignored)."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p, code="missing")
    if p.is_file():
        return [p]
    if any(c.suffix.lower() == ".dcm" for c in p.iterdir() if c.is_file()):
        return [p]
    out = []
    for c in sorted(p.iterdir()):
        if c.name.startswith("."):
            continue
        if c.is_file() and c.name.lower().endswith(VOLUME_EXT):
            out.append(c)
        elif c.is_dir() and any(f.suffix.lower() == ".dcm" for f in c.iterdir() if f.is_file()):
            out.append(c)
    return out


__all__ = ["read_volume", "write_volume", "list_cases", "Volume", "VOLUME_EXT"]
