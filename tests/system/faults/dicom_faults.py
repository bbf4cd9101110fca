"""Broken DICOM series made from a real series: missing, duplicated and truncated slices, mixed
series, inconsistent orientation, uneven spacing, tilted stacks and bad header fields.

Each variant is a folder: a copy of the source series with one change.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _sorted_slices(folder: Path) -> list[tuple[Path, float]]:
    """Slice files sorted along the normal, with their position (mm)."""
    import pydicom

    out = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        n = np.cross(iop[:3], iop[3:])
        out.append((f, float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ n)))
    return sorted(out, key=lambda t: t[1])


def _edit(path: Path, fn: Callable) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def dicom_corpus(c, src: Path) -> None:
    """Add broken-series folders made from the series in ``src`` to the corpus ``c``."""
    slices = _sorted_slices(src)
    files = [f for f, _ in slices]
    n = len(files)
    rng = np.random.default_rng(11)

    def variant(name: str, family: str, expected: set[str]) -> Path:
        d = c.out / f"dicom_{name}"
        shutil.copytree(src, d)
        c.cases.append(_case(d, family, expected))
        return d

    inner = sorted({int(x) for x in rng.integers(1, n - 1, 5)})
    for i in inner:  # an interior slice gone: a gap twice the step
        (variant(f"missing_{i:02d}", "dicom_missing", {"missing_slice"}) / files[i].name).unlink()
    d = variant("missing_two_apart", "dicom_missing", {"missing_slice"})
    (d / files[3].name).unlink()
    (d / files[n - 4].name).unlink()
    for i in sorted({int(x) for x in rng.integers(0, n, 4)}):  # the same slice twice under another name
        d = variant(f"duplicate_{i:02d}", "dicom_duplicate", {"duplicate_slice"})
        shutil.copy(d / files[i].name, d / f"copy_of_{files[i].name}")
    d = variant("duplicate_new_uid", "dicom_duplicate", {"duplicate_slice"})
    dup = d / f"zz_{files[n // 2].name}"
    shutil.copy(d / files[n // 2].name, dup)
    _edit(dup, lambda ds: setattr(ds, "SOPInstanceUID", ds.SOPInstanceUID + ".9"))
    # mixed series: some slices carry another SeriesInstanceUID
    for k, count in ((0, 1), (1, n // 2), (2, 3)):
        d = variant(f"mixed_series_{k}", "dicom_mixed", {"multiple_series"})
        for f in files[k: k + count]:
            _edit(d / f.name, lambda ds: setattr(ds, "SeriesInstanceUID", ds.SeriesInstanceUID + ".77"))
    # inconsistent orientation of one slice, a rotated slice, a non-orthogonal IOP everywhere
    for i in (0, n // 2, n - 1):
        d = variant(f"orientation_{i:02d}", "dicom_orientation", {"inconsistent_orientation"})
        _edit(d / files[i].name, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.8660254, 0.5]))
    d = variant("orientation_nonortho_all", "dicom_orientation", {"bad_geometry"})
    for f in files:
        _edit(d / f.name, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.6, 0.8, 0]))
    # uneven spacing: one slice moved by a fraction of the step; a tilted (sheared) stack
    step = float(np.median(np.diff([p for _, p in slices])))
    for i, frac in ((n // 3, 0.3), (2 * n // 3, -0.2)):
        d = variant(f"nonuniform_{i:02d}", "dicom_spacing", {"nonuniform_spacing", "missing_slice"})
        _edit(d / files[i].name, lambda ds, frac=frac: ds.ImagePositionPatient.__setitem__(
            2, float(ds.ImagePositionPatient[2]) + frac * step))
    d = variant("tilted_stack", "dicom_spacing", {"bad_geometry"})
    for k, f in enumerate(files):
        _edit(d / f.name, lambda ds, k=k: ds.ImagePositionPatient.__setitem__(
            1, float(ds.ImagePositionPatient[1]) + 0.3 * k))
    # header fields
    mid = files[n // 2].name
    for tag, fn, exp in (
        ("pixel_spacing_zero", lambda ds: setattr(ds, "PixelSpacing", [0, 1]), {"bad_spacing"}),
        ("pixel_spacing_neg", lambda ds: setattr(ds, "PixelSpacing", [1, -1]), {"bad_spacing"}),
        ("no_position", lambda ds: delattr(ds, "ImagePositionPatient"), {"bad_header"}),
        ("no_orientation", lambda ds: delattr(ds, "ImageOrientationPatient"), {"bad_header"}),
        ("rows_differ", lambda ds: setattr(ds, "Rows", int(ds.Rows) + 2), {"bad_header", "corrupt", "truncated"}),
        ("multiframe", lambda ds: setattr(ds, "NumberOfFrames", 2), {"unsupported"}),
    ):
        _edit(variant(tag, "dicom_header", exp) / mid, fn)
    d = variant("zero_spacing_all", "dicom_header", {"bad_spacing"})
    for f in files:
        _edit(d / f.name, lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    # truncated slice files: in the header, in the pixel data, the last byte; an empty file
    size = files[n // 2].stat().st_size
    for k in (0, 132, 200, size // 2, size - 1):
        d = variant(f"truncated_slice_{k:05d}", "dicom_truncated", {"truncated", "unreadable", "corrupt"})
        p = d / mid
        p.write_bytes(p.read_bytes()[:k])
    for idx in (0, n - 1):  # the first / last slice along the normal emptied
        d = variant(f"empty_edge_slice_{idx:02d}", "dicom_truncated", {"truncated"})
        (d / files[idx].name).write_bytes(b"")
    # a single slice is not a volume
    d = variant("single_slice", "dicom_header", {"not_3d"})
    for f in files[1:]:
        (d / f.name).unlink()
    # garbage in the pixel data length
    d = variant("pixel_data_short", "dicom_truncated", {"truncated", "corrupt"})
    _edit(d / mid, lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 3]))


def _case(path: Path, family: str, expected: set[str]):
    from tests.system.faults.generate import FaultCase

    return FaultCase(path, family, "image", frozenset(expected))
