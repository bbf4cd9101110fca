"""Damage the readers used to accept silently (found by the fault campaign), one test each."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import read_volume, write_volume
from medseg.io.itk import write_itk
from tests.paths import SAMPLES, shared_path

IMG = SAMPLES / "hippocampus" / "images" / "hippocampus_003.nii.gz"


def _code(path, **kw) -> str:
    with pytest.raises(InputError) as ei:
        read_volume(path, **kw)
    assert str(path) in str(ei.value)
    return ei.value.code


def test_nifti_with_more_bytes_than_the_header_describes(tmp_path):
    raw = bytearray(gzip.decompress(IMG.read_bytes()))
    struct.pack_into("<hh", raw, 70, 4, 16)  # float32 -> int16: half the bytes are left over
    (tmp_path / "a.nii").write_bytes(bytes(raw))
    assert _code(tmp_path / "a.nii") == "bad_header"


def test_nifti_bitpix_disagreeing_with_datatype(tmp_path):
    raw = bytearray(gzip.decompress(IMG.read_bytes()))
    struct.pack_into("<h", raw, 72, 16)
    (tmp_path / "a.nii").write_bytes(bytes(raw))
    assert _code(tmp_path / "a.nii") == "bad_header"


@pytest.fixture
def vol():
    return read_volume(IMG)


def test_mha_negative_spacing_is_not_silently_flipped(tmp_path, vol):
    p = write_itk(vol, tmp_path / "a.mha", compress=False)
    p.write_bytes(p.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 1 -1"))
    assert _code(p) == "bad_spacing"


def test_mha_nan_origin_is_not_read_as_zero(tmp_path, vol):
    p = write_itk(vol, tmp_path / "a.mha", compress=False)
    b = p.read_bytes()
    start = b.index(b"Offset = ")
    p.write_bytes(b[:start] + b"Offset = nan 0 0" + b[b.index(b"\n", start):])
    assert _code(p) == "bad_geometry"


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_damaged_compressed_stream(tmp_path, vol, ext):
    p = write_itk(vol, tmp_path / f"a{ext}", compress=True)
    data = p.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) * 2 // 3] ^= 0xFF
    (tmp_path / f"flip{ext}").write_bytes(bytes(flipped))
    assert _code(tmp_path / f"flip{ext}") in ("corrupt", "truncated")
    (tmp_path / f"cut{ext}").write_bytes(data[:-1])
    assert _code(tmp_path / f"cut{ext}") in ("truncated", "corrupt")
    np.testing.assert_array_equal(read_volume(p).array, vol.array)  # the intact file still reads


def test_mha_zero_dimsize(tmp_path, vol):
    p = write_itk(vol, tmp_path / "a.mha", compress=False)
    p.write_bytes(p.read_bytes().replace(b"DimSize = 34 52 35", b"DimSize = 34 0 35"))
    assert _code(p) == "bad_header"


def test_empty_dcm_slice_is_an_error_not_a_dropped_slice(tmp_path):
    src = shared_path("dicom", "udacity_study3_HCropVolume")
    d = tmp_path / "series"
    shutil.copytree(src, d)
    n = read_volume(d).shape[0]
    (d / "1.dcm").write_bytes(b"")
    assert _code(d) == "truncated"
    (d / "1.dcm").unlink()
    assert read_volume(d).shape[0] == n - 1 or _code(d) == "missing_slice"


def test_cohort_names_the_file_of_a_fractional_label_map(tmp_path, caplog):
    from medseg.metrics.cohort import evaluate_cohort

    ref = read_volume(SAMPLES / "hippocampus" / "labels" / "hippocampus_001.nii.gz", kind="label")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    write_volume(ref, tmp_path / "r" / "c.nii.gz")
    bad = ref.with_array(ref.array.astype(np.float32) * 0.5)
    write_volume(bad, tmp_path / "p" / "c.nii.gz")
    res = evaluate_cohort(tmp_path / "p", tmp_path / "r", progress=False)
    assert res.failed == {"c": "error:non_integer_labels"}
    assert str(tmp_path / "p" / "c.nii.gz") in caplog.text
