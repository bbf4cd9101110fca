"""Value checks (finite images, integer labels), read_volume(kind=...) and list_cases."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.fsutil import atomic_path
from medseg.io import list_cases, read_volume, write_volume
from medseg.io.validate import check_image, check_label
from medseg.volume import Volume
from tests.paths import shared_path


def test_check_image_reports_count_and_first_voxel():
    a = np.zeros((2, 3, 4), np.float32)
    a[1, 2, 3] = np.inf
    a[0, 1, 2] = np.nan
    with pytest.raises(InputError) as ei:
        check_image(Volume(a), "x.nii.gz")
    assert ei.value.code == "non_finite"
    assert "2 voxel" in str(ei.value) and "(0, 1, 2)" in str(ei.value) and "x.nii.gz" in str(ei.value)
    ok = Volume(np.ones((2, 2, 2), np.int16))
    assert check_image(ok, "y") is ok


def test_check_label_converts_exact_float_integers():
    a = np.array([[[0.0, 1.0], [2.0, 300.0]]], dtype=np.float32)
    v = check_label(Volume(a), "s.nii.gz")
    assert v.is_label and v.array.dtype == np.uint16
    np.testing.assert_array_equal(v.array, [[[0, 1], [2, 300]]])
    assert check_label(Volume(a.clip(0, 5)), "s").array.dtype == np.uint8
    b = check_label(Volume(np.array([[[True, False]]])), "m")
    assert b.array.dtype == np.uint8 and b.is_label
    i = np.array([[[0, 7]]], dtype=np.int32)
    assert check_label(Volume(i), "i").array.dtype == np.int32


@pytest.mark.parametrize("value", [0.5, -1.0, np.nan, np.inf, 2.0000001])
def test_check_label_refuses(value):
    a = np.zeros((1, 2, 2), np.float64)
    a[0, 1, 1] = value
    with pytest.raises(InputError) as ei:
        check_label(Volume(a), "lab.nii.gz")
    assert ei.value.code == "non_integer_labels" and "lab.nii.gz" in str(ei.value)


def test_negative_integer_label():
    with pytest.raises(InputError) as ei:
        check_label(Volume(np.array([[[0, -3]]], dtype=np.int8)), "n")
    assert ei.value.code == "non_integer_labels" and "negative" in str(ei.value)


def test_read_volume_kind(tmp_path):
    src = shared_path("hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    v = read_volume(src)
    assert not v.is_label
    lab = read_volume(src, kind="label")
    assert lab.is_label and lab.array.dtype.kind in "iu"
    assert read_volume(src, is_label=True).is_label  # old signature still works
    img = read_volume(shared_path("hippocampus", "imagesTr", "hippocampus_003.nii.gz"), kind="image")
    assert img.array.dtype == np.float32 and not img.is_label
    # float-stored labels holding integers are accepted and become integers
    f = write_volume(v.with_array(v.array.astype(np.float32)), tmp_path / "f.nii.gz")
    back = read_volume(f, kind="label")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, v.array)
    with pytest.raises(ValueError):
        read_volume(src, kind="mask")


def test_list_cases_ignores_temporary_and_hidden_files(tmp_path):
    src = shared_path("hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    vol = read_volume(src)
    write_volume(vol, tmp_path / "b.nii.gz")
    write_volume(vol, tmp_path / "a.mha")
    (tmp_path / ".hidden.nii.gz").write_bytes(src.read_bytes())
    (tmp_path / "readme.txt").write_text("x")
    # a write that is still in progress leaves ".c.nii.gz.XXXX.tmp.nii.gz" beside the target
    with atomic_path(tmp_path / "c.nii.gz") as tmp:
        tmp.write_bytes(src.read_bytes())
        assert tmp.exists()
        names = [p.name for p in list_cases(tmp_path)]
    assert names == ["a.mha", "b.nii.gz"]
    assert [p.name for p in list_cases(tmp_path)] == ["a.mha", "b.nii.gz", "c.nii.gz"]
    assert list_cases(tmp_path / "b.nii.gz") == [tmp_path / "b.nii.gz"]
    with pytest.raises(InputError) as ei:
        list_cases(tmp_path / "nope")
    assert ei.value.code == "missing"
