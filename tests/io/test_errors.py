"""Every bad input gives InputError with a stable code and a message naming the file.

The damaged files are made from real shared data: truncated copies, flipped bytes, patched headers.
"""

from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import read_volume, write_volume
from tests.paths import shared_path


def _raises(path, code, **kw):
    with pytest.raises(InputError) as ei:
        read_volume(path, **kw)
    assert ei.value.code == code, f"{ei.value.code}: {ei.value}"
    assert str(path) in str(ei.value)
    assert ei.value.problem  # a description of the problem beyond the path
    return ei.value


@pytest.fixture
def hippo_gz():
    return shared_path("hippocampus", "imagesTr", "hippocampus_001.nii.gz")


@pytest.fixture
def hippo_raw(hippo_gz):
    """Uncompressed bytes of a real NIfTI-1 file (header at 0, data at 352)."""
    return bytearray(gzip.decompress(hippo_gz.read_bytes()))


def _patched(raw: bytearray, fmt: str, offset: int, *values) -> bytes:
    b = bytearray(raw)
    struct.pack_into("<" + fmt, b, offset, *values)
    return bytes(b)


def test_missing(tmp_path):
    _raises(tmp_path / "nope.nii.gz", "missing")


def test_unknown_format(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    _raises(p, "unknown_format")


def test_unreadable_folder_without_dicom(tmp_path):
    d = tmp_path / "empty_series"
    d.mkdir()
    (d / "README").write_text("no images here")
    _raises(d, "unreadable")


@pytest.mark.parametrize("frac", [0.0, 0.0001, 0.002, 0.3, 0.5, 0.9, 0.9999])
def test_truncated_gzip_at_many_offsets(hippo_gz, tmp_path, frac):
    raw = hippo_gz.read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(raw[: int(len(raw) * frac)])
    _raises(p, "truncated")


@pytest.mark.parametrize("keep", [100, 348, 352, 20000, -1])
def test_truncated_uncompressed(hippo_raw, tmp_path, keep):
    p = tmp_path / "cut.nii"
    p.write_bytes(bytes(hippo_raw[:keep]))
    _raises(p, "truncated")


@pytest.mark.parametrize("where", [0.1, 0.5, 0.8])
def test_corrupt_gzip_stream(hippo_gz, tmp_path, where):
    raw = bytearray(hippo_gz.read_bytes())
    pos = int(len(raw) * where)
    raw[pos] ^= 0xA5
    p = tmp_path / "flip.nii.gz"
    p.write_bytes(bytes(raw))
    _raises(p, "corrupt")


def test_gz_name_without_gzip_data(hippo_raw, tmp_path):
    p = tmp_path / "plain.nii.gz"
    p.write_bytes(bytes(hippo_raw))
    _raises(p, "corrupt")


def test_bad_magic(hippo_raw, tmp_path):
    p = tmp_path / "magic.nii"
    p.write_bytes(_patched(hippo_raw, "4s", 344, b"xyz\x00"))
    _raises(p, "bad_magic")
    q = tmp_path / "png_renamed.nii.gz"
    q.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(600)))
    _raises(q, "bad_magic")


@pytest.mark.parametrize("fmt,offset,value", [("h", 70, 999),  # unknown datatype code
                                               ("h", 40, 9),  # dim[0] out of range
                                               ("h", 42, 0),  # zero-size axis
                                               ("h", 44, -5)])  # negative size
def test_bad_header(hippo_raw, tmp_path, fmt, offset, value):
    p = tmp_path / "hdr.nii"
    p.write_bytes(_patched(hippo_raw, fmt, offset, value))
    _raises(p, "bad_header")


@pytest.mark.parametrize("axis,value", [(1, 0.0), (2, -1.0), (3, float("nan")), (1, float("inf"))])
def test_bad_spacing(hippo_raw, tmp_path, axis, value):
    # nibabel would silently turn 0 into 1 and -1 into 1; medseg refuses.
    p = tmp_path / "pixdim.nii"
    p.write_bytes(_patched(hippo_raw, "f", 76 + 4 * axis, value))
    _raises(p, "bad_spacing")


@pytest.mark.parametrize("srow_x", [(1.0, 0.5, 0.0, 0.0),  # sheared: direction not orthonormal
                                    (float("nan"), 0.0, 0.0, 0.0),  # non-finite affine
                                    (0.0, 0.0, 0.0, 0.0)])  # a zero-length column
def test_bad_geometry_sform(hippo_raw, tmp_path, srow_x):
    assert struct.unpack_from("<h", hippo_raw, 254)[0] > 0  # sform in use
    p = tmp_path / "sform.nii"
    p.write_bytes(_patched(hippo_raw, "4f", 280, *srow_x))
    _raises(p, "bad_geometry")


def test_bad_geometry_qform_nan_offset(hippo_raw, tmp_path):
    b = bytearray(_patched(hippo_raw, "h", 254, 0))  # sform off: the qform is used
    p = tmp_path / "qform.nii"
    p.write_bytes(_patched(b, "f", 268, float("nan")))
    _raises(p, "bad_geometry")


def test_not_3d(tmp_path, hippo_gz):
    img = nib.load(str(hippo_gz))
    data = np.asanyarray(img.dataobj)
    four = np.stack([data, data], axis=-1)
    nib.save(nib.Nifti1Image(four, img.affine), str(tmp_path / "4d.nii.gz"))
    err = _raises(tmp_path / "4d.nii.gz", "not_3d")
    assert "2 volumes" in str(err)
    nib.save(nib.Nifti1Image(data[:, :, 0], img.affine), str(tmp_path / "2d.nii.gz"))
    _raises(tmp_path / "2d.nii.gz", "not_3d")


def test_non_finite_image(tmp_path, hippo_gz):
    img = nib.load(str(hippo_gz))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(tmp_path / "nan.nii.gz"))
    err = _raises(tmp_path / "nan.nii.gz", "non_finite", kind="image")
    assert "2 voxel" in str(err)
    assert np.isnan(read_volume(tmp_path / "nan.nii.gz").array).sum() == 1  # kind=None: no value checks


def test_non_integer_and_negative_labels(tmp_path):
    lab_src = shared_path("hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    img = nib.load(str(lab_src))
    lab = np.asanyarray(img.dataobj).astype(np.float32)
    frac = lab.copy()
    frac[10, 10, 10] = 0.5
    nib.save(nib.Nifti1Image(frac, img.affine), str(tmp_path / "frac.nii.gz"))
    _raises(tmp_path / "frac.nii.gz", "non_integer_labels", kind="label")
    neg = lab.astype(np.int16)
    neg[1, 1, 1] = -1
    nib.save(nib.Nifti1Image(neg, img.affine), str(tmp_path / "neg.nii.gz"))
    _raises(tmp_path / "neg.nii.gz", "non_integer_labels", kind="label")


def test_itk_truncated_and_garbage(tmp_path, hippo_gz):
    vol = read_volume(hippo_gz)
    for ext in (".mha", ".nrrd"):
        p = write_volume(vol, tmp_path / f"ok{ext}")
        raw = p.read_bytes()
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(raw[: len(raw) - 200])
        _raises(cut, "truncated")
        empty = tmp_path / f"empty{ext}"
        empty.write_bytes(b"")
        _raises(empty, "truncated")
    bad = tmp_path / "junk.mha"
    bad.write_bytes(b"this is not a MetaImage header\n" * 20)
    _raises(bad, "bad_magic")


def test_itk_bad_spacing(tmp_path, hippo_gz):
    vol = read_volume(hippo_gz)
    p = write_volume(vol, tmp_path / "sp.mha")
    text = p.read_bytes()
    head, sep, rest = text.partition(b"ElementSpacing = 1 1 1")
    assert sep, "expected an ElementSpacing line"
    p.write_bytes(head + b"ElementSpacing = 1 0 1" + rest)
    _raises(p, "bad_spacing")


def test_itk_bad_geometry(tmp_path, hippo_gz):
    vol = read_volume(hippo_gz)
    p = write_volume(vol, tmp_path / "dir.mha")
    text = p.read_bytes()
    line = next(ln for ln in text.split(b"\n") if ln.startswith(b"TransformMatrix"))
    p.write_bytes(text.replace(line, b"TransformMatrix = 1 0.5 0 0 1 0 0 0 1"))  # sheared axes
    _raises(p, "bad_geometry")
