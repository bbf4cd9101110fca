"""NIfTI round trips: real files and synthetic oblique affines keep the grid and the voxels."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.io import read_volume, write_volume
from medseg.io.nifti import read_nifti, write_nifti
from medseg.volume import Volume
from tests.paths import shared_path

REAL = [
    ("hippocampus", "imagesTr", "hippocampus_001.nii.gz"),  # uint8 image
    ("hippocampus", "imagesTr", "hippocampus_003.nii.gz"),  # float32 image
    ("hippocampus", "labelsTr", "hippocampus_001.nii.gz"),
    ("totalsegmentator", "example_seg_dicom.nii.gz"),  # LAS, anisotropic
    ("totalsegmentator", "example_ct_sm.nii.gz"),
]


@pytest.mark.parametrize("parts", REAL, ids=lambda p: "/".join(p))
def test_read_matches_nibabel_and_round_trips(parts, tmp_path):
    src = shared_path(*parts)
    ref = nib.load(str(src))
    vol = read_nifti(src)
    # array: nibabel (i, j, k) transposed to (k, j, i)
    np.testing.assert_array_equal(vol.array, np.transpose(np.asanyarray(ref.dataobj), (2, 1, 0)))
    # affine: index (z, y, x) -> RAS equals nibabel's affine with columns reversed
    aff = ref.affine.copy()
    aff[:, :3] = ref.affine[:, [2, 1, 0]]
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    assert vol.orientation == "".join(nib.aff2axcodes(ref.affine))
    out = write_volume(vol, tmp_path / "rt.nii.gz")
    back = read_volume(out)
    assert back.shape == vol.shape and back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5, rtol=0)


def _oblique(angles_deg, origin, spacing, flip=False):
    rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    if flip:
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    return Volume(arr, spacing_mm=spacing, origin_mm=origin, direction=rot)


@pytest.mark.parametrize("angles,flip", [((17.3, -41.9, 63.1), False), ((5.0, 2.0, -3.0), True),
                                         ((179.99, 0.3, 0.2), False), ((0.0, 179.97, 90.0), True)])
def test_oblique_affine_round_trip(angles, flip, tmp_path):
    vol = _oblique(angles, origin=(-123.456789, 87.654321, -201.2345678), spacing=(3.3, 0.781234, 0.65), flip=flip)
    p = write_nifti(vol, tmp_path / "obl.nii.gz")
    back = read_nifti(p)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.origin_mm, vol.origin_mm, atol=1e-5, rtol=0)
    np.testing.assert_allclose(back.spacing_mm, vol.spacing_mm, atol=1e-5, rtol=0)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6, rtol=0)
    hdr = nib.load(str(p)).header
    assert int(hdr["sform_code"]) == 1
    if int(hdr["qform_code"]) > 0:  # the qform, when kept, must give the same geometry
        np.testing.assert_allclose(hdr.get_qform(), hdr.get_sform(), atol=1e-5)


def test_qform_dropped_when_it_cannot_represent_the_affine(tmp_path):
    # Near-180-degree rotations: quaternion component a = sqrt(1 - b^2 - c^2 - d^2) is ill-conditioned in
    # float32, so the stored qform differs from the sform by more than 1e-5.
    vol = _oblique((179.99, 0.3, 0.2), origin=(-123.456789, 87.654321, -201.2345678), spacing=(3.3, 0.781234, 0.65))
    aff = vol.affine.copy()
    aff_ijk = aff.copy()
    aff_ijk[:, :3] = aff[:, [2, 1, 0]]
    probe = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), aff_ijk)
    probe.header.set_qform(aff_ijk, code=1)
    probe.header.set_sform(aff_ijk, code=1)
    qerr = np.abs(probe.header.get_qform() - probe.header.get_sform()).max()
    p = write_nifti(vol, tmp_path / "q.nii")
    hdr = nib.load(str(p)).header
    assert qerr > 1e-5  # premise: the quaternion cannot hold this affine
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(read_nifti(p).affine, vol.affine, atol=1e-5)
    import SimpleITK as sitk

    from medseg.io.itk import sitk_to_volume

    via_itk = sitk_to_volume(sitk.ReadImage(str(p)))
    np.testing.assert_allclose(via_itk.direction, vol.direction, atol=1e-5)
    np.testing.assert_allclose(via_itk.origin_mm, vol.origin_mm, atol=1e-5)


def test_sform_wins_over_a_different_qform(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    sform = np.diag([2.0, 2.0, 2.0, 1.0])
    sform[:3, 3] = (5.0, 6.0, 7.0)
    qform = np.diag([1.0, 1.0, 1.0, 1.0])
    img = nib.Nifti1Image(arr, None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    nib.save(img, str(tmp_path / "s.nii"))
    vol = read_nifti(tmp_path / "s.nii")
    assert vol.spacing_mm == (2.0, 2.0, 2.0) and vol.origin_mm == (5.0, 6.0, 7.0)
    assert vol.meta["sform_code"] == 2 and vol.meta["qform_code"] == 1


def test_uncompressed_and_4d_singleton(tmp_path):
    data = np.random.default_rng(1).normal(size=(6, 5, 4, 1)).astype(np.float32)
    aff = np.diag([0.5, 0.7, 1.2, 1.0])
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "v.nii"))
    vol = read_nifti(tmp_path / "v.nii")
    assert vol.shape == (4, 5, 6)
    assert vol.spacing_mm == pytest.approx((1.2, 0.7, 0.5))
    np.testing.assert_array_equal(vol.array, data[..., 0].transpose(2, 1, 0))


def test_nifti2_is_read(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    aff = np.diag([1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = (-1.0, 2.0, -3.0)
    nib.save(nib.Nifti2Image(data, aff), str(tmp_path / "v2.nii.gz"))
    vol = read_nifti(tmp_path / "v2.nii.gz")
    assert vol.meta["format"] == "nifti2"
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0))
    assert vol.origin_mm == (-1.0, 2.0, -3.0)


def test_write_dtypes_and_label_intent(tmp_path):
    lab = np.zeros((3, 4, 5), dtype=np.int64)
    lab[1, 2, 3] = 7
    vol = Volume(lab, is_label=True)
    p = write_nifti(vol, tmp_path / "lab.nii.gz")
    img = nib.load(str(p))
    assert img.get_data_dtype() == np.int32
    assert img.header.get_intent()[0] == "label"
    assert read_nifti(p).array[1, 2, 3] == 7
    p2 = write_nifti(Volume(lab > 0), tmp_path / "mask.nii.gz")
    assert nib.load(str(p2)).get_data_dtype() == np.uint8


def test_gzip_crc_error_is_caught_where_nibabel_reads_garbage(tmp_path, shared):
    """A flipped byte inside the deflate stream: nibabel streams and may hand back wrong voxels,
    medseg checks the gzip CRC and refuses the file."""
    src = shared("hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p = tmp_path / "crc.nii.gz"
    p.write_bytes(bytes(raw))
    from medseg.errors import InputError

    with pytest.raises(InputError) as ei:
        read_nifti(p)
    assert ei.value.code == "corrupt" and str(p) in str(ei.value)
    with pytest.raises((gzip.BadGzipFile, OSError, EOFError)):
        gzip.decompress(bytes(raw))


def test_all_48_axis_orientations_round_trip(tmp_path):
    """Every signed permutation of the axes (the orientations real scanners write) survives
    NIfTI and MHA, and nibabel's axis codes agree with Volume.orientation."""
    import itertools

    from medseg.io.itk import read_itk, write_itk

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1000, size=(3, 4, 5)).astype(np.int16)
    n = 0
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.zeros((3, 3))
            for col, (row, s) in enumerate(zip(perm, signs)):
                d[row, col] = s
            origin = tuple(rng.uniform(-250, 250, size=3).tolist())
            vol = Volume(arr, spacing_mm=(2.5, 1.25, 0.75), origin_mm=origin, direction=d)
            back = read_nifti(write_nifti(vol, tmp_path / "o.nii.gz"))
            assert back.grid_mismatch(vol, tol_mm=1e-5) is None
            np.testing.assert_array_equal(back.array, arr)
            assert "".join(nib.aff2axcodes(nib.load(str(tmp_path / "o.nii.gz")).affine)) == vol.orientation
            assert read_itk(write_itk(vol, tmp_path / "o.mha")).grid_mismatch(vol, tol_mm=1e-9) is None
            n += 1
    assert n == 48
