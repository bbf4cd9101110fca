"""SimpleITK formats: LPS <-> RAS conversion agrees with nibabel; NIfTI -> MHA/NRRD -> NIfTI keeps geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medseg.io import list_cases, read_volume, write_volume
from medseg.io.itk import read_itk, sitk_to_volume, volume_to_sitk, write_itk
from medseg.io.nifti import read_nifti
from medseg.volume import Volume
from tests.paths import shared_path

FILES = [
    ("hippocampus", "labelsTr", "hippocampus_003.nii.gz"),
    ("totalsegmentator", "example_seg_dicom.nii.gz"),  # LAS
    ("totalsegmentator", "example_mr_sm.nii.gz"),
]


@pytest.mark.parametrize("parts", FILES, ids=lambda p: p[-1])
def test_nibabel_and_simpleitk_agree_on_the_same_file(parts):
    src = shared_path(*parts)
    a = read_nifti(src)  # nibabel path
    b = sitk_to_volume(sitk.ReadImage(str(src)))  # ITK path, LPS -> RAS
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=1e-5)
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


def test_lps_conversion_by_hand():
    # A RAS-oriented volume: x -> R, y -> A, z -> S. In ITK (LPS) x points to -L, y to -P.
    vol = Volume(np.zeros((2, 3, 4), np.int16), spacing_mm=(3.0, 2.0, 1.0), origin_mm=(10.0, -20.0, 30.0))
    img = volume_to_sitk(vol)
    assert img.GetSize() == (4, 3, 2)
    assert img.GetSpacing() == (1.0, 2.0, 3.0)
    assert img.GetOrigin() == (-10.0, 20.0, 30.0)
    assert img.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    # world position of voxel (z, y, x) = (1, 2, 3): ITK gives LPS, medseg's affine RAS
    lps = img.TransformIndexToPhysicalPoint((3, 2, 1))
    ras = vol.affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]])


@pytest.mark.parametrize("ext", [".mha", ".nrrd", ".mhd", ".nhdr"])
def test_nifti_to_itk_to_nifti_keeps_geometry(tmp_path, ext):
    src = shared_path("totalsegmentator", "example_seg_dicom.nii.gz")
    vol = read_volume(src)
    mid = write_volume(vol, tmp_path / f"mid{ext}")
    back_itk = read_volume(mid)
    assert back_itk.same_grid(vol, tol_mm=1e-9)
    np.testing.assert_array_equal(back_itk.array, vol.array)
    out = write_volume(back_itk, tmp_path / "back.nii.gz")
    back = read_volume(out)
    assert back.same_grid(vol, tol_mm=1e-5)
    np.testing.assert_array_equal(back.array, vol.array)
    # the two NIfTI files give nibabel the same affine
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(src)).affine, atol=1e-5)
    # detached headers: one case listed, no temporary leftovers
    assert [p.name for p in list_cases(tmp_path)] == sorted(p.name for p in (mid, out))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_oblique_round_trip_through_mha(tmp_path):
    rot = Rotation.from_euler("zyx", [33.0, -12.5, 71.2], degrees=True).as_matrix() @ np.diag([1, -1, 1.0])
    arr = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32)
    vol = Volume(arr, spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-77.7, 12.34, 501.5), direction=rot)
    back = read_itk(write_itk(vol, tmp_path / "o.mha"))
    assert back.grid_mismatch(vol, tol_mm=1e-9) is None
    np.testing.assert_array_equal(back.array, arr)
    # SimpleITK's own view of the written file: index -> LPS point equals medseg's RAS point, flipped
    img = sitk.ReadImage(str(tmp_path / "o.mha"))
    lps = np.array(img.TransformIndexToPhysicalPoint((6, 5, 4)))
    ras = vol.affine @ np.array([4, 5, 6, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_vector_image_is_not_3d(tmp_path):
    img = sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(img, str(tmp_path / "vec.mha"))
    from medseg.errors import InputError

    with pytest.raises(InputError) as ei:
        read_volume(tmp_path / "vec.mha")
    assert ei.value.code == "not_3d"


def test_bool_volume_written_as_uint8(tmp_path):
    vol = Volume(np.eye(4, dtype=bool)[None].repeat(2, axis=0))
    back = read_volume(write_volume(vol, tmp_path / "m.nrrd"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, vol.array.astype(np.uint8))
