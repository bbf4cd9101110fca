"""DICOM series: same array and geometry as SimpleITK's ImageSeriesReader; clear errors for broken series."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io import list_cases, read_volume
from medseg.io.dicom import list_series, read_dicom_series
from medseg.io.itk import sitk_to_volume
from tests.paths import shared_path

SERIES = [("dicom", "udacity_study3_T2reg"), ("dicom", "udacity_study3_HCropVolume"),
          ("totalsegmentator", "example_ct_dicom")]


def _sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk_to_volume(reader.Execute())


@pytest.mark.parametrize("parts", SERIES, ids=lambda p: p[-1])
def test_matches_simpleitk_series_reader(parts):
    folder = shared_path(*parts)
    vol = read_dicom_series(folder)
    ref = _sitk_series(folder)
    assert vol.shape == ref.shape
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.origin_mm, ref.origin_mm, atol=1e-5)
    np.testing.assert_allclose(vol.spacing_mm, ref.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-5)
    assert vol.meta["n_slices"] == vol.shape[0]


def test_jpeg2000_series_decodes_with_rescale():
    folder = shared_path("totalsegmentator", "example_ct_dicom")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    vol = read_volume(folder)
    assert vol.array.dtype == np.int16
    # stored values are unsigned with intercept -1024: air must come out near -1000 HU
    assert float(ds.RescaleIntercept) == -1024.0 and vol.array.min() == -1024
    files = sorted(folder.iterdir())
    pos = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    lowest = files[int(np.argmin(pos))]  # slices sorted ascending along the normal (+z here): first = lowest
    d = pydicom.dcmread(lowest)
    np.testing.assert_array_equal(vol.array[0], d.pixel_array.astype(np.int32) + int(d.RescaleIntercept))


def _flip_to_match(vol, ref):
    """vol's array and affine with axes flipped where its direction opposes ref's."""
    arr, aff = vol.array, vol.affine.copy()
    for k in range(3):
        if vol.direction[:, k] @ ref.direction[:, k] < 0:
            arr = np.flip(arr, axis=k)
            aff[:3, 3] += aff[:3, k] * (vol.shape[k] - 1)
            aff[:3, k] = -aff[:3, k]
    return arr, aff


def test_totalsegmentator_dicom_matches_its_segmentation():
    """example_seg_dicom.nii.gz is the TotalSegmentator mask of this series, stored with the row axis
    flipped (LAS). Same voxel centres after the flip, and the labels then lie on tissue, not air."""
    ct = read_volume(shared_path("totalsegmentator", "example_ct_dicom"))
    seg = read_volume(shared_path("totalsegmentator", "example_seg_dicom.nii.gz"), kind="label")
    assert seg.shape == ct.shape
    arr, aff = _flip_to_match(seg, ct)
    np.testing.assert_allclose(aff, ct.affine, atol=1e-3)
    labelled = arr > 0
    air_aligned = float((ct.array[labelled] < -500).mean())
    air_unflipped = float((ct.array[seg.array > 0] < -500).mean())
    assert air_aligned < 0.05 < 0.2 < air_unflipped


@pytest.fixture
def hcrop(tmp_path):
    src = shared_path("dicom", "udacity_study3_HCropVolume")
    dst = tmp_path / "hcrop"
    shutil.copytree(src, dst)
    return dst


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _code(folder, code, **kw):
    with pytest.raises(InputError) as ei:
        read_volume(folder, **kw)
    assert ei.value.code == code, str(ei.value)
    assert str(folder) in str(ei.value)
    return ei.value


def _by_position(folder):
    files = sorted(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def test_missing_slice(hcrop):
    _by_position(hcrop)[17].unlink()
    err = _code(hcrop, "missing_slice")
    assert "about 1 slice" in str(err)


def test_duplicate_slice(hcrop):
    f = _by_position(hcrop)[5]
    shutil.copy(f, hcrop / "copy_of_slice.dcm")
    _code(hcrop, "duplicate_slice")


def test_nonuniform_spacing(hcrop):
    f = _by_position(hcrop)[20]
    ipp = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
    _edit(f, ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.3])  # steps 1.3 and 0.7 mm around it
    err = _code(hcrop, "nonuniform_spacing")
    assert "0.7" in str(err) and "1.3" in str(err)


def test_inconsistent_orientation(hcrop):
    f = _by_position(hcrop)[3]
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    _edit(f, ImageOrientationPatient=[c, s, 0.0, -s, c, 0.0])
    _code(hcrop, "inconsistent_orientation")


def test_tilted_stack_is_refused(hcrop):
    for i, f in enumerate(_by_position(hcrop)):
        ipp = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
        _edit(f, ImagePositionPatient=[ipp[0] + 0.2 * i, ipp[1], ipp[2]])  # sheared: gantry-tilt-like
    _code(hcrop, "bad_geometry")


def test_single_slice_is_not_3d(tmp_path):
    src = shared_path("dicom", "udacity_study3_HCropVolume", "1.dcm")
    d = tmp_path / "one"
    d.mkdir()
    shutil.copy(src, d / "1.dcm")
    _code(d, "not_3d")


@pytest.mark.parametrize("keep", [140, 300, 800, -500])  # inside the header ... inside the pixel data
def test_truncated_slice(hcrop, keep):
    f = _by_position(hcrop)[9]
    raw = f.read_bytes()
    f.write_bytes(raw[:keep])
    err = _code(hcrop, "truncated")
    assert f.name in str(err)


def test_multiple_series_listing_and_choice(tmp_path):
    a = shared_path("dicom", "udacity_study3_HCropVolume")
    b = shared_path("dicom", "udacity_study3_T2reg")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in a.iterdir():
        shutil.copy(f, mixed / f"a_{f.name}")
    for f in b.iterdir():
        shutil.copy(f, mixed / f"b_{f.name}")
    err = _code(mixed, "multiple_series")
    uid_a = str(pydicom.dcmread(next(a.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    uid_b = str(pydicom.dcmread(next(b.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    msg = str(err)
    assert uid_a in msg and uid_b in msg and "40 slices" in msg and "22 slices" in msg
    assert "HippoCrop" not in msg  # SeriesDescription is free text: an identifier, never printed
    assert [s["n_slices"] for s in list_series(mixed)] == [40, 22]
    picked = read_volume(mixed, series_uid=uid_b)
    np.testing.assert_array_equal(picked.array, read_volume(b).array)
    _code(mixed, "series_not_found", series_uid="1.2.3.4")


def test_no_patient_identifiers_in_messages_or_meta(tmp_path):
    folder = shared_path("dicom", "udacity_study3_T2reg")
    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    secrets = [str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate") if str(ds.get(k) or "")]
    assert secrets
    vol = read_volume(folder)
    mixed = tmp_path / "m"
    shutil.copytree(folder, mixed)
    shutil.copy(shared_path("dicom", "udacity_study3_HCropVolume", "1.dcm"), mixed / "other.dcm")
    with pytest.raises(InputError) as ei:
        read_volume(mixed)
    texts = [str(vol.meta), str(ei.value)]
    for s in secrets:
        assert all(s not in t for t in texts)


def test_file_path_reads_its_series_and_list_cases(tmp_path):
    folder = shared_path("totalsegmentator", "example_ct_dicom")  # files without extension
    one_file = sorted(folder.iterdir())[3]
    assert read_volume(one_file).shape == (20, 512, 512)
    assert list_cases(folder) == [folder]
    parent = tmp_path / "cohort"
    shutil.copytree(folder, parent / "case_ct")
    (parent / "notes.txt").write_text("x")
    assert list_cases(parent) == [parent / "case_ct"]


def test_zero_pixel_spacing(hcrop):
    _edit(_by_position(hcrop)[0], PixelSpacing=[0.0, 1.0])
    _code(hcrop, "bad_spacing")


def test_non_dicom_files_are_ignored(hcrop):
    (hcrop / "README.txt").write_text("acquisition notes")
    (hcrop / "thumbs.db").write_bytes(b"\x00" * 300)
    assert read_volume(hcrop).shape == (40, 50, 34)
