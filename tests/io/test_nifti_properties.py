"""Hypothesis properties of NIfTI I/O: random valid volumes round-trip exactly; random header
damage never ends in anything but InputError."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.errors import InputError
from medseg.io import read_volume, write_volume
from medseg.volume import Volume

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@st.composite
def volumes(draw) -> Volume:
    shape = draw(st.tuples(*[st.integers(1, 6)] * 3))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, allow_nan=False, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    arr = draw(arrays(dtype, shape, elements=elements))
    spacing = draw(st.tuples(*[st.floats(0.05, 8.0)] * 3))
    origin = draw(st.tuples(*[st.floats(-250.0, 250.0)] * 3))
    q = draw(st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda t: np.linalg.norm(t) > 0.2))
    flips = np.diag(draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3)))
    perm = np.eye(3)[:, draw(st.permutations([0, 1, 2]))]
    return Volume(arr, spacing, origin, _rotation(q) @ perm @ flips, is_label=draw(st.booleans()))


@SETTINGS
@given(vol=volumes(), gz=st.booleans())
def test_valid_volumes_round_trip(vol, gz):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("v.nii.gz" if gz else "v.nii")
        write_volume(vol, p)
        back = read_volume(p)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5, rtol=0)


def _good_bytes() -> bytes:
    vol = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), (2.0, 1.0, 0.5), (10.0, -3.0, 4.0))
    with tempfile.TemporaryDirectory() as d:
        p = write_volume(vol, Path(d) / "v.nii")
        return p.read_bytes()


GOOD = _good_bytes()


@st.composite
def damaged(draw) -> bytes:
    b = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, 351))
        b[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        b = b[: draw(st.integers(0, len(b)))]
    return bytes(b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged(), gz=st.booleans())
def test_header_damage_gives_input_error_or_a_volume(data, gz):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("v.nii.gz" if gz else "v.nii")
        p.write_bytes(gzip.compress(data) if gz else data)
        try:
            vol = read_volume(p)
        except InputError as exc:
            assert str(p) in str(exc) and exc.code
            return
    assert vol.array.ndim == 3  # whatever got through is a well-formed Volume
    assert np.all(np.isfinite(vol.spacing_mm)) and min(vol.spacing_mm) > 0
