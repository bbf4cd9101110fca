"""DICOM SEG: written against each shared DICOM series, read back exactly by highdicom and by medseg's
own reader, referencing the series; bad input and failed writes leave no partial file."""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseg.errors import InputError
from medseg.io import read_volume
from medseg.io.dicom_seg import read_dicom_seg, write_dicom_seg
from medseg.io.segments import PALETTE, describe_labels
from tests.paths import shared_path

SERIES = [("dicom", "udacity_study3_T2reg"), ("dicom", "udacity_study3_HCropVolume"),
          ("totalsegmentator", "example_ct_dicom")]
LABELS = {0: "background", 1: "anterior", 2: "posterior", 3: "left kidney", 4: "7"}
ALGO = {"bundle": "hippocampus_unet", "bundle_sha256": "ab" * 32}


def _label_map(shape, seed=0) -> np.ndarray:
    """Labels 1, 3 and 4 as blobs (2 stays absent), in a few slices only (empty frames are omitted)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    z, y, x = shape
    lab[1:z // 2, y // 4:y // 2, x // 4:x // 2] = 1
    lab[z // 2:z - 1, y // 2:3 * y // 4, x // 3:2 * x // 3] = 3
    lab[z // 3, :3, :3] = 4
    noise = rng.random(shape) < 0.02
    lab[noise & (lab == 0)] = 1
    return lab


def _source_uids(folder):
    """(SOP instance UID, IPP) per slice read with pydicom alone, sorted along the slice normal; an anonymised
    export with a blank SOPInstanceUID is identified by its file meta (MediaStorageSOPInstanceUID)."""
    rows = []
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        n = np.cross(iop[:3], iop[3:])
        uid = str(ds.SOPInstanceUID or "") or str(ds.file_meta.MediaStorageSOPInstanceUID)
        rows.append((float(np.asarray(ds.ImagePositionPatient, float) @ n), uid, ds))
    rows.sort(key=lambda r: r[0])
    return [r[1] for r in rows], rows[0][2]


@pytest.mark.parametrize("parts", SERIES, ids=[p[-1] for p in SERIES])
def test_round_trip_on_the_shared_series(tmp_path, parts):
    folder = shared_path(*parts)
    vol = read_volume(folder)
    lab = _label_map(vol.shape)
    label = vol.with_array(lab, is_label=True)
    segments = describe_labels(LABELS, bundle_name="hippocampus_unet")
    out = write_dicom_seg(label, tmp_path / "case_seg.dcm", source=folder, segments=segments, algorithm=ALGO)
    assert out == tmp_path / "case_seg.dcm"

    ds = pydicom.dcmread(out)                                   # pydicom reads it
    seg = hd.seg.Segmentation.from_dataset(ds)                  # highdicom re-parses it
    uids, first = _source_uids(folder)
    present = [1, 3, 4]
    assert len(ds.SegmentSequence) == len(present)              # one segment per non-empty label
    refs = [str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(refs) == sorted(uids)
    assert str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) == str(first.SeriesInstanceUID)
    assert str(ds.FrameOfReferenceUID) == str(first.FrameOfReferenceUID)
    assert str(ds.StudyInstanceUID) == str(first.StudyInstanceUID)
    frame_refs = {str(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                  for g in ds.PerFrameFunctionalGroupsSequence}
    assert frame_refs <= set(uids)

    # highdicom's reading, by source instance in slice order; segment labels -> the bundle's values
    by_name = {str(s.SegmentLabel): v for v, s in zip(present, ds.SegmentSequence)}
    assert by_name == {"anterior": 1, "left kidney": 3, "label 4": 4}
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    lut = np.zeros(len(present) + 1, np.uint8)
    for s in ds.SegmentSequence:
        lut[int(s.SegmentNumber)] = by_name[str(s.SegmentLabel)]
    np.testing.assert_array_equal(lut[numbers], lab)

    # medseg's reader: on the source grid, and alone (grid of the frames present)
    back = read_dicom_seg(out, reference=vol)
    np.testing.assert_array_equal(back.array, lab)
    assert back.same_grid(vol)
    alone = read_dicom_seg(out)
    np.testing.assert_array_equal(read_volume(out, kind="label").array, alone.array)   # read_volume: SEG too
    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    np.testing.assert_array_equal(alone.array, lab[zs[0]:zs[-1] + 1])
    np.testing.assert_allclose(alone.affine[:3, :3], vol.affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(alone.origin_mm, vol.affine[:3, :3] @ [zs[0], 0, 0] + vol.affine[:3, 3], atol=1e-3)
    assert alone.meta["segments"] == {1: "anterior", 3: "left kidney", 4: "label 4"}


def test_segments_carry_codes_colours_and_the_algorithm(tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    vol = read_volume(folder)
    lab = _label_map(vol.shape)
    out = write_dicom_seg(vol.with_array(lab, is_label=True), tmp_path / "s.dcm", source=folder,
                          segments=describe_labels(LABELS, bundle_name="hippocampus_unet"), algorithm=ALGO)
    ds = pydicom.dcmread(out)
    s1, s3, s4 = ds.SegmentSequence
    # anterior of the hippocampus bundle: SNOMED CT hippocampus; "left kidney": kidney + laterality left
    assert (s1.SegmentedPropertyTypeCodeSequence[0].CodeValue, s1.SegmentedPropertyTypeCodeSequence[0]
            .CodingSchemeDesignator) == ("5366008", "SCT")
    assert s1.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    t3 = s3.SegmentedPropertyTypeCodeSequence[0]
    assert t3.CodeValue == "64033007" and t3.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    # "7" is no name: "label 4", typed by the bundle's structure (hippocampus)
    assert s4.SegmentLabel == "label 4"
    for s, v in zip((s1, s3, s4), (1, 3, 4)):
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(s.RecommendedDisplayCIELabValue)).to_rgb()
        assert np.max(np.abs(np.asarray(rgb, float) - PALETTE[v - 1])) <= 1
        alg = s.SegmentationAlgorithmIdentificationSequence[0]
        assert s.SegmentAlgorithmType == "AUTOMATIC" and alg.AlgorithmName == "medseg hippocampus_unet"
        assert "ab" * 32 in str(alg.AlgorithmParameters) and "hippocampus_unet" in str(alg.AlgorithmParameters)
        from medseg import __version__

        assert alg.AlgorithmVersion == __version__ and ds.SoftwareVersions == __version__
    assert ds.SegmentationType == "BINARY" and ds.Modality == "SEG"


def test_unknown_structure_gets_the_generic_code(tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    vol = read_volume(folder)
    lab = _label_map(vol.shape)
    lab[lab > 1] = 0
    out = write_dicom_seg(vol.with_array(lab, is_label=True), tmp_path / "s.dcm", source=folder,
                          segments=describe_labels({0: "bg", 1: "thing"}), algorithm={"bundle": "my_model"})
    s = pydicom.dcmread(out).SegmentSequence[0]
    assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"      # SNOMED CT "Tissue"


def test_empty_map_writes_no_seg(tmp_path, caplog):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    vol = read_volume(folder)
    empty = vol.with_array(np.zeros(vol.shape, np.uint8), is_label=True)
    assert write_dicom_seg(empty, tmp_path / "s.dcm", source=folder, segments=describe_labels(LABELS),
                           algorithm=ALGO) is None
    assert not list(tmp_path.iterdir()) and "no DICOM SEG written" in caplog.text


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    vol = read_volume(folder)
    label = vol.with_array(_label_map(vol.shape), is_label=True)

    def broken(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken)
    with pytest.raises(Exception) as ei:
        write_dicom_seg(label, tmp_path / "s.dcm", source=folder, segments=describe_labels(LABELS), algorithm=ALGO)
    assert "s.dcm" in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_values_without_a_name_and_other_grids_are_refused(tmp_path):
    folder = shared_path("dicom", "udacity_study3_HCropVolume")
    vol = read_volume(folder)
    lab = _label_map(vol.shape)
    lab[0, 0, 0] = 9
    with pytest.raises(InputError) as ei:
        write_dicom_seg(vol.with_array(lab, is_label=True), tmp_path / "s.dcm", source=folder,
                        segments=describe_labels(LABELS), algorithm=ALGO)
    assert ei.value.code == "bad_labels" and "[9]" in str(ei.value)
    from medseg.volume import Volume

    small = Volume(np.ones((3, 4, 5), np.uint8), (1.0, 1.0, 1.0), is_label=True)
    with pytest.raises(InputError) as ei:
        write_dicom_seg(small, tmp_path / "s.dcm", source=folder, segments=describe_labels(LABELS), algorithm=ALGO)
    assert ei.value.code == "grid_mismatch"
    shifted = Volume(_label_map(vol.shape), vol.spacing_mm, tuple(np.add(vol.origin_mm, (0, 0, 1.0))), vol.direction,
                     is_label=True)
    with pytest.raises(InputError) as ei:
        write_dicom_seg(shifted, tmp_path / "s.dcm", source=folder, segments=describe_labels(LABELS), algorithm=ALGO)
    assert ei.value.code == "grid_mismatch"
    other = read_volume(shared_path("dicom", "udacity_study3_T2reg"))
    out = write_dicom_seg(vol.with_array(_label_map(vol.shape), is_label=True), tmp_path / "ok.dcm", source=folder,
                          segments=describe_labels(LABELS), algorithm=ALGO)
    with pytest.raises(InputError) as ei:
        read_dicom_seg(out, reference=other)
    assert ei.value.code == "grid_mismatch"
    assert not (tmp_path / "s.dcm").exists()


# ----------------------------------------------------------------------------- bad source series
@pytest.fixture
def hcrop(tmp_path):
    dst = tmp_path / "hcrop"
    shutil.copytree(shared_path("dicom", "udacity_study3_HCropVolume"), dst)
    return dst


def _write(folder, tmp_path, shape):
    lab = np.zeros(shape, np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    from medseg.volume import Volume

    with pytest.raises(InputError) as ei:
        write_dicom_seg(Volume(lab, (1.0, 1.0, 1.0), is_label=True), tmp_path / "out" / "s.dcm", source=folder,
                        segments=describe_labels(LABELS), algorithm=ALGO)
    assert not (tmp_path / "out" / "s.dcm").exists()
    return ei.value


def test_series_with_a_missing_slice_is_refused(hcrop, tmp_path):
    files = sorted(hcrop.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    files[17].unlink()
    assert _write(hcrop, tmp_path, (40, 50, 34)).code == "missing_slice"


def test_mixed_series_in_one_folder_are_refused(hcrop, tmp_path):
    for f in shared_path("dicom", "udacity_study3_T2reg").iterdir():
        shutil.copy(f, hcrop / f"b_{f.name}")
    err = _write(hcrop, tmp_path, (40, 50, 34))
    assert err.code == "multiple_series" and "--series-uid" in str(err)


def test_enhanced_multiframe_input_is_refused(hcrop, tmp_path):
    f = sorted(hcrop.iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.NumberOfFrames = 2
    ds.save_as(f)
    assert _write(hcrop, tmp_path, (40, 50, 34)).code == "unsupported"


def test_seg_reader_refuses_other_objects(tmp_path):
    f = sorted(shared_path("dicom", "udacity_study3_HCropVolume").iterdir())[0]
    with pytest.raises(InputError) as ei:
        read_dicom_seg(f)
    assert ei.value.code == "not_seg"


def test_seg_files_are_not_slices_or_series(tmp_path, hcrop):
    """A SEG beside the slices is ignored by the series reader; an output folder holding SEGs (and
    Slicer .seg.nrrd files) is not a DICOM series: its label maps are the cases."""
    from medseg.io import list_cases, write_volume

    vol = read_volume(hcrop)
    label = vol.with_array(_label_map(vol.shape), is_label=True)
    write_dicom_seg(label, hcrop / "zz_seg.dcm", source=hcrop, segments=describe_labels(LABELS), algorithm=ALGO)
    np.testing.assert_array_equal(read_volume(hcrop).array, vol.array)
    out = tmp_path / "out"
    write_dicom_seg(label, out / "a_seg.dcm", source=hcrop, segments=describe_labels(LABELS), algorithm=ALGO)
    write_volume(label, out / "a.nii.gz")
    from medseg.io.seg_nrrd import write_seg_nrrd

    write_seg_nrrd(label, out / "a.seg.nrrd", segments=describe_labels(LABELS))
    assert list_cases(out) == [out / "a.nii.gz"]


def test_totalsegmentator_multi_organ_map_round_trip(tmp_path):
    """The real TotalSegmentator segmentation of example_ct_dicom (dozens of organs, stored with the row
    axis flipped), moved onto the series' grid, through a SEG and back: every voxel, one segment per organ."""
    folder = shared_path("totalsegmentator", "example_ct_dicom")
    ct = read_volume(folder)
    seg = read_volume(shared_path("totalsegmentator", "example_seg_dicom.nii.gz"), kind="label")
    arr = np.ascontiguousarray(np.flip(seg.array, axis=1))     # LAS -> the series' LPS rows (see test_dicom.py)
    label = ct.with_array(arr.astype(np.uint8), is_label=True)
    present = [int(v) for v in np.unique(arr) if v > 0]
    names = {0: "background", **{v: f"organ {v}" for v in range(1, int(arr.max()) + 1)}}
    out = write_dicom_seg(label, tmp_path / "ct_seg.dcm", source=folder, segments=describe_labels(names),
                          algorithm=ALGO)
    ds = pydicom.dcmread(out)
    assert len(ds.SegmentSequence) == len(present) > 20
    np.testing.assert_array_equal(read_dicom_seg(out, reference=ct).array, arr)
    uids, _ = _source_uids(folder)
    numbers = hd.seg.Segmentation.from_dataset(ds).get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(np.asarray([0] + present)[numbers], arr)   # segment k = k-th label present
