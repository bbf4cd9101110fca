"""DICOM Segmentation objects (SEG): a label map written against its source DICOM series with
``highdicom``, and read back onto a grid.

Writing (:func:`write_dicom_seg`): one BINARY SEG instance per case. It references the source
series (its SOP instances, Frame of Reference, patient and study: the standard needs them so that
a PACS attaches the SEG to the study - the only medseg output that carries the source's patient
and study identifiers), holds one segment per label present in the label map (segment numbers
1..S in label order; a label absent from the map gets no segment), each with the bundle's label
name, a coded property (:mod:`medseg.io.segments`: SNOMED CT for known structures, generic
``Tissue`` otherwise), a display colour (CIELab from the palette) and the algorithm
identification: ``medseg <bundle>``, medseg's version, and the bundle's name and SHA-256 as
algorithm parameters. The label value of each segment is kept in its TrackingID
(``medseg label N``) so that :func:`read_dicom_seg` gives the original values back. Empty frames
are omitted (highdicom's default). The file is written atomically: a failure leaves nothing.

Reading (:func:`read_dicom_seg`): the frames are placed by their ImagePositionPatient, onto the
grid of ``reference`` (the source series as a Volume) when given, else onto the grid spanned by
the frames themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.segments import Segment
from medseg.volume import Volume, check_geometry

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LPS_RAS = np.diag([-1.0, -1.0, 1.0])
TRACKING_PREFIX = "medseg label "
# Type 2 attributes of the patient / study modules that highdicom copies from the source: an export that
# dropped them gets them back empty (allowed for Type 2), never filled in
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _coded(code):
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _descriptions(segments: list[Segment], algorithm: Mapping[str, str]) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    bundle = str(algorithm.get("bundle", "model"))
    params = {k: str(v) for k, v in algorithm.items() if k in ("bundle", "bundle_sha256") and v}
    alg = hd.AlgorithmIdentificationSequence(name=f"medseg {bundle}"[:64], family=codes.DCM.ArtificialIntelligence,
                                             version=str(algorithm.get("version", "unknown"))[:64], source="medseg",
                                             parameters=params or None)
    out = []
    for number, seg in enumerate(segments, start=1):
        rgb = np.asarray(seg.color, dtype=np.float64)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=seg.name[:64], segmented_property_category=_coded(seg.category),
            segmented_property_type=_coded(seg.type), algorithm_type="AUTOMATIC", algorithm_identification=alg,
            tracking_uid=hd.UID(), tracking_id=f"{TRACKING_PREFIX}{seg.value}",
            display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in rgb)))
        if seg.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
                [_coded(seg.modifier)]
        out.append(desc)
    return out


def _sources(headers: list[Any], folder: Path) -> list[Any]:
    """Copies of the source headers that highdicom accepts (the originals are not changed)."""
    import pydicom

    out = []
    for ds in headers:
        if "FrameOfReferenceUID" not in ds or "StudyInstanceUID" not in ds:
            raise InputError(f"{Path(str(ds.filename)).name if ds.filename else 'a slice'} has no "
                             "FrameOfReferenceUID/StudyInstanceUID: a DICOM SEG cannot reference this series",
                             path=folder, code="bad_header")
        ds = ds.copy()
        meta = getattr(ds, "file_meta", None)
        for key, fallback in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or ""):   # anonymised exports that blanked the UIDs: the file meta's
                ds[key] = pydicom.DataElement(key, "UI", str(meta.get(fallback, "") or "") if meta else "")
            if not str(ds.get(key, "") or ""):
                raise InputError(f"a slice has no {key} (nor {fallback}): a DICOM SEG cannot reference it",
                                 path=folder, code="bad_header")
        for key in _TYPE2:
            if key not in ds:
                setattr(ds, key, "")
        out.append(ds)
    return out


def _check_grid(label: Volume, headers: list[Any], folder: Path) -> None:
    """The label map must lie on the series' grid: first slice position and in-plane axes (as the reader)."""
    iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    ipp = np.asarray([float(v) for v in headers[0].ImagePositionPatient])
    ok = (np.allclose(label.origin_mm, LPS_RAS @ ipp, atol=1e-3)
          and np.allclose(label.direction[:, 2], LPS_RAS @ iop[:3], atol=1e-4)
          and np.allclose(label.direction[:, 1], LPS_RAS @ iop[3:], atol=1e-4))
    if not ok:
        raise InputError("the label map's origin or axes differ from the series' (not predicted on this series?)",
                         path=folder, code="grid_mismatch")


def write_dicom_seg(label: Volume, path: str | Path, *, source: str | Path, segments: Mapping[int, Segment],
                    algorithm: Mapping[str, str], series_uid: str | None = None) -> Path | None:
    """Write ``label`` (on the grid of the DICOM series in ``source``) as a DICOM SEG at ``path``.

    Parameters
    ----------
    label : label map read from / predicted on the series (array plane ``k`` = the ``k``-th slice
        in :func:`medseg.io.dicom.read_dicom_series` order).
    source : the series' folder; ``series_uid`` picks the series when the folder holds several.
    segments : :class:`~medseg.io.segments.Segment` per label value (``describe_labels``).
    algorithm : ``bundle`` (name), ``bundle_sha256``, ``version`` (medseg's).

    Returns the path, or None (nothing written, a warning logged) when the map holds no label:
    a SEG must have at least one segment.

    Raises InputError when the series cannot be referenced (other grid, missing UIDs) or the map
    holds values without a segment; the file is written atomically (no partial file on failure).
    """
    import highdicom as hd

    from medseg import __version__
    from medseg.fsutil import atomic_path
    from medseg.io.dicom import series_headers

    path, folder = Path(path), Path(source)
    hd_log = logging.getLogger("highdicom")   # its INFO lines name source SOP instance UIDs: keep them out of logs
    hd_log.setLevel(max(hd_log.getEffectiveLevel(), logging.WARNING))
    headers = series_headers(folder, series_uid=series_uid)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if label.shape != (len(headers), rows, cols):
        raise InputError(f"the label map {label.shape} is not on the grid of the series ({len(headers)} slices of "
                         f"{rows}x{cols})", path=folder, code="grid_mismatch")
    _check_grid(label, headers, folder)
    present = [int(v) for v in np.unique(label.array) if v > 0]
    unknown = [v for v in present if v not in segments]
    if unknown:
        raise InputError(f"label value(s) {unknown} have no name in the bundle's labels", path=path,
                         code="bad_labels")
    if not present:
        log.warning("%s: no label in the segmentation: no DICOM SEG written (a SEG needs one segment)", path.name)
        return None
    lut = np.zeros(int(label.array.max()) + 1, dtype=np.uint16 if len(present) > 255 else np.uint8)
    for number, v in enumerate(present, start=1):
        lut[v] = number
    pixels = lut[label.array]
    version = str(algorithm.get("version") or __version__)
    seg = hd.seg.Segmentation(
        source_images=_sources(headers, folder), pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=_descriptions([segments[v] for v in present], {**algorithm, "version": version}),
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medseg", manufacturer_model_name=str(algorithm.get("bundle", "model"))[:64],
        software_versions=version[:64], device_serial_number="none", content_label="MEDSEG",
        content_description=f"medseg {algorithm.get('bundle', '')}".strip()[:64])
    seg.SeriesDescription = f"medseg {algorithm.get('bundle', '')}".strip()[:64]
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


# ----------------------------------------------------------------------------- reading
def _floats(item, keyword: str, n: int, path: Path) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in item.get(keyword)], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"the SEG has a missing or invalid {keyword}", path=path, code="bad_header")
    return arr


def _functional(ds, i: int, seq: str, path: Path):
    """Functional group ``seq`` of frame ``i``: per-frame, else shared."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if groups:
            g = groups[i] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
            if seq in g and g[seq].value:
                return g[seq].value[0]
    raise InputError(f"frame {i + 1} of the SEG has no {seq}", path=path, code="bad_header")


def _label_values(ds) -> dict[int, int]:
    """Segment number -> label value (medseg's TrackingID, else the segment number) and names."""
    out = {}
    for item in ds.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        tid = str(item.get("TrackingID", "") or "")
        value = number
        if tid.startswith(TRACKING_PREFIX) and tid[len(TRACKING_PREFIX):].isdigit():
            value = int(tid[len(TRACKING_PREFIX):])
        out[number] = value
    return out


def read_dicom_seg(path: str | Path, *, reference: Volume | None = None) -> Volume:
    """Read a DICOM SEG into a label Volume.

    Label values: medseg's own SEGs give the original label values back (TrackingID), other SEGs
    their segment numbers; where segments overlap the higher segment number wins. FRACTIONAL
    segments count where they are at least half the maximum value. ``meta["segments"]`` maps label
    values to segment labels (no patient data in ``meta``).

    ``reference``: the grid to place the frames on (e.g. the source series read with
    :func:`medseg.io.read_volume`); frames must lie on its planes. Without it the grid spans the
    frames present (the first and last non-empty slices).
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"not a readable DICOM file ({exc.__class__.__name__})", path=path, code="unreadable") \
            from None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError("not a DICOM Segmentation object (SOP class)", path=path, code="not_seg")
    kind = str(ds.get("SegmentationType", ""))
    if kind not in ("BINARY", "FRACTIONAL"):
        raise InputError(f"SegmentationType {kind!r} is not supported (BINARY, FRACTIONAL)", path=path,
                         code="unsupported")
    values = _label_values(ds)
    try:
        frames = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InputError(f"cannot decode the SEG's frames ({exc.__class__.__name__})", path=path, code="corrupt") \
            from None
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frames = frames.reshape(n, int(ds.Rows), int(ds.Columns))
    if kind == "FRACTIONAL":
        frames = frames >= (int(ds.get("MaximumFractionalValue", 255)) + 1) // 2
    iop = _floats(_functional(ds, 0, "PlaneOrientationSequence", path), "ImageOrientationPatient", 6, path)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    measures = _functional(ds, 0, "PixelMeasuresSequence", path)
    ps = _floats(measures, "PixelSpacing", 2, path)
    ipps = np.stack([_floats(_functional(ds, i, "PlanePositionSequence", path), "ImagePositionPatient", 3, path)
                     for i in range(n)])
    numbers = [int(_functional(ds, i, "SegmentIdentificationSequence", path).ReferencedSegmentNumber)
               for i in range(n)]
    if reference is not None:
        inv = np.linalg.inv(reference.affine)
        idx = (inv[:3, :3] @ (LPS_RAS @ ipps.T) + inv[:3, 3:4]).T        # (n, 3) = (z, y, x) voxel indices
        axes = reference.direction
        if not (np.allclose(axes[:, 2], LPS_RAS @ row, atol=1e-4) and np.allclose(axes[:, 1], LPS_RAS @ col, atol=1e-4)
                and np.allclose(idx[:, 1:], 0, atol=1e-3) and np.allclose(idx[:, 0], np.round(idx[:, 0]), atol=1e-2)
                and (int(ds.Rows), int(ds.Columns)) == reference.shape[1:]):
            raise InputError("the SEG's frames do not lie on the planes of the reference grid", path=path,
                             code="grid_mismatch")
        z = np.round(idx[:, 0]).astype(int)
        if z.min(initial=0) < 0 or z.max(initial=0) >= reference.shape[0]:
            raise InputError("the SEG has frames outside the reference grid", path=path, code="grid_mismatch")
        shape, spacing = reference.shape, reference.spacing_mm
        origin, direction = reference.origin_mm, reference.direction
    else:
        pos = ipps @ normal
        step = float(measures.get("SpacingBetweenSlices") or 0) or float(np.median(np.diff(np.unique(pos))) if
                                                                      len(np.unique(pos)) > 1 else 1.0)
        z = np.round((pos - pos.min()) / step).astype(int)
        shape = (int(z.max()) + 1, int(ds.Rows), int(ds.Columns))
        spacing = (step, float(ps[0]), float(ps[1]))
        o = LPS_RAS @ ipps[int(np.argmin(pos))]
        origin = (float(o[0]), float(o[1]), float(o[2]))
        direction = LPS_RAS @ np.stack([normal, col, row], axis=1)
        try:
            check_geometry(spacing, direction)
        except ValueError as exc:
            raise InputError(f"bad geometry: {exc}", path=path, code="bad_geometry") from None
    top = max(values.values(), default=0)
    out = np.zeros(shape, dtype=np.uint8 if top < 256 else np.uint16)
    for i in np.argsort(numbers, kind="stable"):        # higher segment numbers drawn last
        out[z[i]][frames[i] > 0] = values.get(numbers[i], numbers[i])
    names = {values.get(int(s.SegmentNumber), int(s.SegmentNumber)): str(s.get("SegmentLabel", ""))
             for s in ds.get("SegmentSequence", [])}
    return Volume(out, spacing, origin, direction, is_label=True,
                  meta={"path": str(path), "format": "dicom-seg", "segments": names})
