"""DICOM series folders -> Volume, with the checks SimpleITK/GDCM only warn about.

Steps: read every file's header (pixel data deferred, read only for the chosen series), keep image slices, group them by
SeriesInstanceUID, sort them along the slice normal ``n = row x col`` (from
ImageOrientationPatient) by ``n . ImagePositionPatient``, refuse gaps, duplicates, uneven
spacing, mixed orientations and tilted (sheared) stacks, then decode the pixels (pydicom with
pylibjpeg for compressed transfer syntaxes) and apply RescaleSlope/RescaleIntercept.

Geometry: array axis x runs along the IOP row cosine (increasing column index), axis y along the
IOP column cosine, axis z along ``n`` (slices ascending), spacing ``(step, PixelSpacing[0],
PixelSpacing[1])``; DICOM's LPS world is turned into RAS by negating the first two coordinates.

No patient identifiers (name, ID, birth date...) ever go into messages, logs or ``meta``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume, check_geometry

log = logging.getLogger(__name__)

LPS_RAS = np.diag([-1.0, -1.0, 1.0])
GAP_FACTOR = 1.5  # a step larger than this times the median step means missing slices
SPACING_RTOL = 1e-3  # allowed relative deviation of a step from the median step
ORIENT_ATOL = 1e-4  # allowed difference between the slices' direction cosines
TILT_RTOL = 1e-3  # allowed sideways drift of slice positions per mm along the normal


@dataclass(frozen=True)
class _Slice:
    path: Path
    series_uid: str
    iop: np.ndarray  # (6,) row cosine then column cosine, LPS
    ipp: np.ndarray  # (3,) LPS mm, centre of the first transmitted pixel
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    cols: int
    dataset: Any = field(default=None, compare=False, repr=False)  # header; pixel data deferred


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # large elements (the pixel data) are only read from disk when accessed
        return pydicom.dcmread(path, defer_size="16 KB")
    except InvalidDicomError:
        if path.suffix.lower() == ".dcm":  # named as a slice: a damaged slice, not an unrelated file
            size = path.stat().st_size
            code = "truncated" if size < 132 else "corrupt"
            raise InputError(f"{path.name} is named as a DICOM file but is not one ({size} bytes, no DICOM "
                             "preamble); the slice is truncated or damaged - re-copy it", path=path.parent,
                             code=code) from None
        return None  # not a DICOM file (README, thumbnails...): ignore it
    except Exception as exc:  # truncated or damaged header
        raise InputError(f"cannot parse the DICOM header of {path.name} ({exc.__class__.__name__}); the file is "
                         "truncated or corrupt", path=path.parent, code="unreadable") from None


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    val = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in val], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"slice {path.name} has a missing or invalid {keyword} ({n} numbers needed)",
                         path=path.parent, code="bad_header")
    return arr


def _scan(folder: Path) -> list[_Slice]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    slices = []
    for f in files:
        ds = _read_header(f)
        if ds is None:
            continue  # not DICOM
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.66.4":
            log.debug("%s: a DICOM SEG, not a slice of the series: ignored", f.name)
            continue
        if "Rows" not in ds or "Columns" not in ds:
            sop = ds.get("SOPClassUID")
            if sop is None or "Image Storage" in str(getattr(sop, "name", "")):
                # an image object without its image header, or no header at all: cut short
                raise InputError(f"the DICOM header of {f.name} is incomplete (file truncated?); re-copy it",
                                 path=folder, code="truncated")
            continue  # not an image (DICOMDIR, structured report, ...)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{f.name} is a multi-frame (enhanced) DICOM object; convert it with dcm2niix first",
                             path=folder, code="unsupported")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{f.name} has colour pixels; expected a greyscale series", path=folder,
                             code="unsupported")
        sp = _floats(ds, "PixelSpacing", 2, f)
        if np.any(sp <= 0):
            raise InputError(f"slice {f.name} has PixelSpacing {tuple(sp.tolist())}; must be positive",
                             path=folder, code="bad_spacing")
        slices.append(_Slice(path=f, series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                             iop=_floats(ds, "ImageOrientationPatient", 6, f),
                             ipp=_floats(ds, "ImagePositionPatient", 3, f),
                             pixel_spacing=(float(sp[0]), float(sp[1])), rows=int(ds.Rows), cols=int(ds.Columns),
                             dataset=ds))
    return slices


def list_series(folder: str | Path) -> list[dict]:
    """The image series in ``folder``: ``[{uid, n_slices}]``, largest first. Free-text fields
    (SeriesDescription, StudyDescription, ...) often hold names: they are identifiers and are never read."""
    groups: dict[str, list[_Slice]] = {}
    for s in _scan(Path(folder)):
        groups.setdefault(s.series_uid, []).append(s)
    out = [{"uid": uid, "n_slices": len(g)} for uid, g in groups.items()]
    return sorted(out, key=lambda d: (-d["n_slices"], d["uid"]))


def _pick_series(folder: Path, slices: list[_Slice], series_uid: str | None) -> list[_Slice]:
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"no series with SeriesInstanceUID {series_uid!r} here (found: "
                             f"{', '.join(repr(u) for u in groups) or 'none'})", path=folder, code="series_not_found")
        return groups[series_uid]
    if len(groups) > 1:
        listing = "; ".join(f"{u or '<empty UID>'} ({len(g)} slices)"
                            for u, g in sorted(groups.items(), key=lambda kv: -len(kv[1])))
        raise InputError(f"folder holds {len(groups)} DICOM series; pick one with series_uid= "
                         f"(--series-uid): {listing}", path=folder, code="multiple_series")
    return next(iter(groups.values()))


def _unit_cosines(iop: np.ndarray, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 1e-3 or abs(nc - 1) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise InputError(f"ImageOrientationPatient {tuple(np.round(iop, 6).tolist())} is not two orthogonal unit "
                         "vectors", path=folder, code="bad_geometry")
    return row / nr, col / nc


def _sort_and_check(folder: Path, series: list[_Slice]) -> tuple[list[_Slice], np.ndarray, float]:
    """Slices sorted along the normal, the normal (LPS) and the slice step (mm)."""
    first = series[0]
    for s in series[1:]:
        if not np.allclose(s.iop, first.iop, atol=ORIENT_ATOL, rtol=0):
            raise InputError(f"slices have different orientations (ImageOrientationPatient of {s.path.name} differs "
                             f"from {first.path.name}); this is not one stack - separate the stacks first",
                             path=folder, code="inconsistent_orientation")
        if (s.rows, s.cols) != (first.rows, first.cols) or not np.allclose(s.pixel_spacing, first.pixel_spacing,
                                                                            rtol=1e-4, atol=0):
            raise InputError(f"slices differ in size or pixel spacing ({s.path.name}: {s.rows}x{s.cols} at "
                             f"{s.pixel_spacing} mm vs {first.rows}x{first.cols} at {first.pixel_spacing} mm)",
                             path=folder, code="bad_header")
    if len(series) < 2:
        raise InputError(f"only one image slice ({first.path.name}): a single 2D slice is not a 3D volume",
                         path=folder, code="not_3d")
    row, col = _unit_cosines(first.iop, folder)
    normal = np.cross(row, col)
    pos = np.array([float(s.ipp @ normal) for s in series])
    order = np.argsort(pos, kind="stable")
    series = [series[i] for i in order]
    pos = pos[order]
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise InputError(f"{dup.size} duplicated slice position(s): {series[i].path.name} and "
                         f"{series[i + 1].path.name} are both at {pos[i]:.3f} mm along the normal (repeated "
                         "acquisition or echoes mixed in one series); remove the duplicates", path=folder,
                         code="duplicate_slice")
    med = float(np.median(steps))
    big = np.flatnonzero(steps > GAP_FACTOR * med)
    if big.size:
        i = int(big[0])
        missing = int(round(steps[i] / med)) - 1
        raise InputError(f"missing slice(s): gap of {steps[i]:.3f} mm between {series[i].path.name} and "
                         f"{series[i + 1].path.name} where the usual step is {med:.3f} mm (about {max(missing, 1)} "
                         f"slice(s) missing; {big.size} gap(s) in all); re-export the complete series",
                         path=folder, code="missing_slice")
    dev = np.abs(steps - med) / med
    if dev.max() > SPACING_RTOL:
        raise InputError(f"non-uniform slice spacing: steps range from {steps.min():.4f} to {steps.max():.4f} mm "
                         f"(median {med:.4f} mm, {dev.max():.2%} deviation > {SPACING_RTOL:.1%}); a regular voxel "
                         "grid would misplace slices. Resample the series to uniform spacing first",
                         path=folder, code="nonuniform_spacing")
    extent = pos[-1] - pos[0]
    drift = (series[-1].ipp - series[0].ipp) - normal * extent
    if np.linalg.norm(drift) > TILT_RTOL * extent + 1e-3:
        raise InputError(f"slice positions drift {np.linalg.norm(drift):.3f} mm sideways over {extent:.1f} mm along "
                         "the slice normal (gantry tilt or sheared stack); correct the tilt (e.g. dcm2niix) first",
                         path=folder, code="bad_geometry")
    return series, normal, float(extent / (len(series) - 1))


def _pixels(series: list[_Slice], folder: Path) -> np.ndarray:
    planes = []
    slopes, intercepts = [], []
    for s in series:
        ds = s.dataset
        try:
            arr = ds.pixel_array
        except Exception as exc:
            text = str(exc)
            code = "truncated" if ("length" in text.lower() or "expected" in text.lower()) else "corrupt"
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise InputError(f"cannot decode the pixel data of {s.path.name} (transfer syntax {syntax}): "
                             f"{exc.__class__.__name__}: {text[:200]}", path=folder, code=code) from None
        if arr.shape != (s.rows, s.cols):
            raise InputError(f"pixel data of {s.path.name} has shape {arr.shape}, header says {s.rows}x{s.cols}",
                             path=folder, code="corrupt")
        planes.append(arr)
        slopes.append(float(ds.get("RescaleSlope", 1) or 1))
        intercepts.append(float(ds.get("RescaleIntercept", 0) or 0))
        object.__setattr__(s, "dataset", None)  # free the raw pixel bytes and pydicom's cached array
    raw = np.stack(planes)
    slope, inter = np.asarray(slopes), np.asarray(intercepts)
    if np.all(slope == 1) and np.all(inter == np.round(inter)):
        if np.all(inter == 0):
            return raw
        lo = float(raw.min()) + inter.min()
        hi = float(raw.max()) + inter.max()
        dtype = next(t for t in (np.int16, np.int32, np.int64) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
        return raw.astype(dtype) + inter.astype(dtype)[:, None, None]
    return (raw.astype(np.float64) * slope[:, None, None] + inter[:, None, None]).astype(np.float32)


def read_dicom_series(folder: str | Path, *, is_label: bool = False, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from a folder (or the series of one given file) into a Volume.

    Parameters
    ----------
    folder : folder of slice files (non-recursive; non-DICOM files are ignored). A single file
        selects its own folder and series.
    is_label : mark the volume as a label map.
    series_uid : SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Volume with array ``(z, y, x)`` = ``(slices, rows, columns)``, rescaled values (int16/int32
    when slope is 1 and the intercept an integer, float32 otherwise), RAS geometry.
    ``meta`` holds ``series_uid`` and ``n_slices``: no patient data, and no free-text field such as
    SeriesDescription (it often holds names, so it is treated as an identifier and never read).

    Raises
    ------
    InputError
        codes ``missing``, ``unreadable``, ``multiple_series``, ``series_not_found``, ``not_3d``,
        ``duplicate_slice``, ``missing_slice``, ``nonuniform_spacing``, ``inconsistent_orientation``,
        ``bad_geometry``, ``bad_spacing``, ``bad_header``, ``unsupported``, ``truncated``, ``corrupt``.
    """
    path = Path(folder)
    if not path.exists():
        raise InputError("no such file or folder", path=path, code="missing")
    if path.is_file():
        ds = _read_header(path)
        if ds is None:
            raise InputError("not a DICOM file (no DICM preamble)", path=path, code="bad_magic")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "") if series_uid is None else series_uid
        path = path.parent
    slices = _scan(path)
    if not slices:
        raise InputError("no DICOM image files in this folder", path=path, code="unreadable")
    series = _pick_series(path, slices, series_uid)
    series, normal, step = _sort_and_check(path, series)
    row, col = _unit_cosines(series[0].iop, path)
    direction = LPS_RAS @ np.stack([normal, col, row], axis=1)  # columns: z, y, x axes
    spacing = (step, series[0].pixel_spacing[0], series[0].pixel_spacing[1])
    origin = LPS_RAS @ series[0].ipp
    try:
        check_geometry(spacing, direction)
    except ValueError as exc:
        raise InputError(f"bad geometry: {exc}", path=path, code="bad_geometry") from None
    from medseg.limits import check_size

    voxels = len(series) * series[0].rows * series[0].cols
    check_size(voxels=voxels, nbytes=voxels * 4, what="DICOM series", path=path)
    array = _pixels(series, path)
    meta = {"path": str(path), "format": "dicom", "series_uid": series[0].series_uid, "n_slices": len(series)}
    log.debug("%s: read DICOM series %s, %d slices", path, series[0].series_uid, len(series))
    return Volume(array, spacing, tuple(origin.tolist()), direction, is_label=is_label, meta=meta)


def series_headers(folder: str | Path, *, series_uid: str | None = None) -> list[Any]:
    """The headers (pydicom datasets, pixel data not read) of one series of ``folder``, in the slice
    order of :func:`read_dicom_series`: header ``k`` is the source of array plane ``k``. Same checks
    and errors as the reader."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    slices = _scan(path)
    if not slices:
        raise InputError("no DICOM image files in this folder", path=path, code="unreadable")
    series, _, _ = _sort_and_check(path, _pick_series(path, slices, series_uid))
    return [s.dataset for s in series]
