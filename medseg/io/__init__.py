"""Volume I/O with exact geometry. Axis and orientation conversion happens only in this package.

``read_volume(path)`` picks the reader by extension (NIfTI with nibabel; NRRD/MHA/MHD and DICOM
series folders with SimpleITK/pydicom); ``write_volume(vol, path)`` writes atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from medseg.errors import InputError, printable
from medseg.volume import Volume

NIFTI_EXT = (".nii.gz", ".nii")
ITK_EXT = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_EXT = NIFTI_EXT + ITK_EXT
# temporary names made by fsutil.atomic_path (".NAME.XXXX.tmp.EXT") and write_itk (".NAME.XXXX.tmp")
_TMP_NAME = re.compile(r"^\..*\.tmp(\.[A-Za-z0-9.]+)?$")


def _is_dicom_file(path: Path) -> bool:
    """True for ``*.dcm`` or a file with the DICOM preamble ('DICM' at byte 128)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"   # DICOM Segmentation Storage


def _is_dicom_seg(path: Path) -> bool:
    """True for a readable DICOM Segmentation object (e.g. medseg's own ``CASE_seg.dcm`` outputs)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return False          # unreadable: counted as a (damaged) slice, the reader names it
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def _is_dicom_folder(path: Path, *, probe: int = 8) -> bool:
    """True when one of the first ``probe`` visible files of the folder is a DICOM image (a DICOM SEG
    does not make a folder a series: an output folder of ``medseg predict --output-format dicom-seg``)."""
    files = sorted(c for c in path.iterdir() if c.is_file() and not c.name.startswith("."))
    return any(_is_dicom_file(c) and not _is_dicom_seg(c) for c in files[:probe])


def _format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_EXT):
        return "nifti"
    if name.endswith(ITK_EXT):
        return "itk"
    if path.exists() and _is_dicom_file(path):
        return "dicom"
    return "unknown"


def read_volume(path: str | Path, *, is_label: bool = False, series_uid: str | None = None,
                kind: Literal["image", "label"] | None = None, allow_2d: bool = False) -> Volume:
    """Read a NIfTI file, an ITK file (NRRD/MHA/MHD), a DICOM series folder or a DICOM SEG file
    (:func:`medseg.io.dicom_seg.read_dicom_seg`: a label map on the grid its frames span) into a Volume.

    Parameters
    ----------
    path : file or DICOM folder.
    is_label : mark the result as a label map (no value checks unless ``kind`` says so).
    series_uid : SeriesInstanceUID to read from a DICOM folder holding several series.
    kind : ``"image"`` refuses NaN/Inf voxels (code ``non_finite``); ``"label"`` refuses
        non-integer or negative values (code ``non_integer_labels``), converts float labels that
        hold integers to an unsigned integer dtype and sets ``is_label=True``; ``None`` checks no values.
    allow_2d : a 2D NIfTI becomes one slice marked ``meta["ndim"] = 2`` instead of an error.

    Raises InputError naming the file and the problem for anything unreadable or inconsistent.
    """
    if kind not in (None, "image", "label"):
        raise ValueError(f"read_volume: kind must be 'image', 'label' or None, got {kind!r}")
    if kind == "label":
        is_label = True
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p, code="missing")
    if not p.is_dir():
        from medseg.limits import require_regular_file

        require_regular_file(p)  # a FIFO named x.nii.gz would block the reader forever
    fmt = _format(p)
    if fmt == "nifti":
        from medseg.io.nifti import read_nifti

        vol = read_nifti(p, is_label=is_label, allow_2d=allow_2d)
    elif fmt == "itk":
        from medseg.io.itk import read_itk

        vol = read_itk(p, is_label=is_label)
    elif fmt == "dicom" and p.is_file() and _is_dicom_seg(p):
        from medseg.io.dicom_seg import read_dicom_seg

        vol = read_dicom_seg(p)     # on the grid its frames span; read_dicom_seg(p, reference=...) for the series'
    elif fmt == "dicom":
        from medseg.io.dicom import read_dicom_series

        vol = read_dicom_series(p, is_label=is_label, series_uid=series_uid)
    else:
        raise InputError(f"unknown image format (supported: {', '.join(VOLUME_EXT)}, DICOM folders)", path=p,
                         code="unknown_format")
    if kind == "image":
        from medseg.io.validate import check_image

        vol = check_image(vol, p)
    elif kind == "label":
        from medseg.io.validate import check_label

        vol = check_label(vol, p)
    return vol


def write_volume(vol: Volume, path: str | Path) -> Path:
    """Write ``vol`` to ``path`` (format from the extension), atomically."""
    p = Path(path)
    fmt = _format(p) if not p.is_dir() else "dicom"
    if fmt == "nifti":
        from medseg.io.nifti import write_nifti

        return write_nifti(vol, p)
    if fmt == "itk":
        from medseg.io.itk import write_itk

        return write_itk(vol, p)
    raise InputError(f"cannot write this format (use {', '.join(VOLUME_EXT)})", path=p, code="unknown_format")


def list_cases(path: str | Path) -> list[Path]:
    """The volumes under ``path``: the file itself, or every volume file / DICOM folder in a folder
    (sorted, non-recursive; hidden files, temporary files of atomic writes, the data files of
    detached headers and 3D Slicer ``.seg.nrrd`` segmentations (outputs, not images) are ignored;
    hidden volume files are named in a warning rather than skipped without a word). A folder that
    itself holds DICOM image files is one case (DICOM SEG files do not count)."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=p, code="missing")
    if p.is_file():
        return [p]
    if _is_dicom_folder(p):
        return [p]
    out, hidden = [], []
    for c in sorted(p.iterdir()):
        if _TMP_NAME.match(c.name):
            continue
        if c.name.startswith("."):
            if c.name.lower().endswith(VOLUME_EXT):
                hidden.append(c.name)
            continue
        if c.name.lower().endswith(VOLUME_EXT) and not c.is_dir() and not c.is_file():
            out.append(c)  # a FIFO, socket or device: read_volume reports it as this case's error
        elif c.is_file() and c.name.lower().endswith(VOLUME_EXT) and not c.name.lower().endswith(".seg.nrrd"):
            out.append(c)
        elif c.is_dir() and _is_dicom_folder(c):
            out.append(c)
    if hidden:
        import logging

        logging.getLogger("medseg.io").warning(
            "%s: %d hidden volume file(s) not used as cases (names starting with '.'; rename them to use "
            "them): %s", p, len(hidden), ", ".join(printable(h) for h in hidden[:5]) + (" ..." if len(hidden) > 5
                                                                                        else ""))
    return out


__all__ = ["read_volume", "write_volume", "list_cases", "Volume", "VOLUME_EXT"]
