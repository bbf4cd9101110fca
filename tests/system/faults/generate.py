"""Make damaged variants of real NIfTI / MHA / NRRD files (and DICOM series, see ``dicom_faults``).

``make_corpus(out_dir, sources)`` writes every variant under ``out_dir`` and returns one
:class:`FaultCase` per variant: its path, how it is read (``kind="image"`` or ``"label"``, or
``"pair"`` for a label that is fine on its own but sits on another grid than its reference) and
the error codes a correct reader may give for it. Everything is deterministic (fixed seeds).

Sources (:class:`Sources`) are small real files: an intensity image and a label map of the same
case (``data_samples/hippocampus``), plus optionally a DICOM series folder.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRUNC = {"truncated"}
GZ_DAMAGE = {"corrupt", "truncated"}


@dataclass(frozen=True)
class FaultCase:
    """One bad variant. ``ref`` is the reference a ``pair`` case must be compared with."""

    path: Path
    family: str
    kind: str  # "image" | "label" | "pair"
    expected: frozenset[str]
    ref: Path | None = None


@dataclass
class Sources:
    image: Path  # NIfTI-1 .nii.gz intensity image
    label: Path  # NIfTI-1 .nii.gz label map of the same case
    dicom: Path | None = None  # a DICOM series folder (optional)


class _Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.cases: list[FaultCase] = []

    def add(self, name: str, data: bytes, family: str, kind: str, expected: set[str], ref: Path | None = None) -> Path:
        p = self.out / name
        p.write_bytes(data)
        self.cases.append(FaultCase(p, family, kind, frozenset(expected), ref))
        return p


# ----------------------------------------------------------------------------- NIfTI-1 header fields
# offsets in the 348-byte NIfTI-1 header (little-endian files here)
_DIM, _DATATYPE, _BITPIX, _PIXDIM, _VOX_OFFSET = 40, 70, 72, 76, 108
_QFORM_CODE, _SFORM_CODE, _QUATERN, _QOFFSET, _SROW = 252, 254, 256, 268, 280
_MAGIC = 344


def _patch(raw: bytes, fmt: str, offset: int, *values) -> bytes:
    b = bytearray(raw)
    struct.pack_into("<" + fmt, b, offset, *values)
    return bytes(b)


def _dims(raw: bytes) -> tuple[int, ...]:
    return struct.unpack_from("<8h", raw, _DIM)


def _nifti_variants(raw: bytes, label_raw: bytes) -> list[tuple[str, bytes, str, set[str]]]:
    """(name, uncompressed bytes, kind, expected codes) for header and voxel faults."""
    dim = _dims(raw)
    out: list[tuple[str, bytes, str, set[str]]] = []
    hdr = ("bad_header",)
    out += [(f"dim0_{v}", _patch(raw, "h", _DIM, v), "image", {"bad_header"}) for v in (0, -1, 8, 100)]
    # a 3D file whose header says 2D: not_3d where 2D is refused; bad_header where `medseg evaluate`
    # accepts 2D masks (the voxel data then holds more bytes than the 2D header describes)
    out += [("dim0_2", _patch(raw, "h", _DIM, 2), "image", {"not_3d", "bad_header"})]
    for ax in (1, 2, 3):
        out += [(f"dim{ax}_zero", _patch(raw, "h", _DIM + 2 * ax, 0), "image", set(hdr)),
                (f"dim{ax}_neg", _patch(raw, "h", _DIM + 2 * ax, -7), "image", set(hdr)),
                (f"dim{ax}_double", _patch(raw, "h", _DIM + 2 * ax, 2 * dim[ax]), "image", TRUNC)]
    # more voxels than the data holds, fewer voxels than the data holds
    out += [("dims_shrunk", _patch(raw, "h", _DIM + 2, dim[1] - 1), "image", {"bad_header"})]
    # 4D with more than one volume: header only (data short) and with the data really doubled
    four = _patch(_patch(raw, "h", _DIM, 4), "h", _DIM + 8, 2)
    out += [("4d_header_only", four, "image", {"not_3d", "truncated"}),
            ("4d_two_volumes", four + raw[352:], "image", {"not_3d"}),
            ("5d_two", _patch(_patch(raw, "h", _DIM, 5), "2h", _DIM + 8, 1, 2) + raw[352:], "image", {"not_3d"})]
    # datatype / bitpix
    dt = struct.unpack_from("<h", raw, _DATATYPE)[0]
    bp = struct.unpack_from("<h", raw, _BITPIX)[0]
    for code, bits, exp in ((64, 64, TRUNC), (1792, 128, {"bad_header", "truncated"}),
                            (128, 24, {"bad_header"}), (2304, 32, {"bad_header"}), (999, bp, {"bad_header"}),
                            (0, bp, {"bad_header"}), (-3, bp, {"bad_header"})):
        if code == dt:
            continue
        out.append((f"datatype_{code}", _patch(_patch(raw, "h", _DATATYPE, code), "h", _BITPIX, bits), "image",
                    set(exp)))
    small = {2: (256, 8), 4: (2, 8), 16: (4, 16), 64: (16, 32)}.get(dt)  # smaller type, same bitpix rule
    if small is not None:
        out.append(("datatype_smaller", _patch(_patch(raw, "h", _DATATYPE, small[0]), "h", _BITPIX, small[1]),
                    "image", {"bad_header"}))
    out += [(f"bitpix_{v}", _patch(raw, "h", _BITPIX, v), "image", {"bad_header"}) for v in (0, bp * 2 + 8, -8)]
    # spacing
    for ax in (1, 2, 3):
        for tag, v in (("zero", 0.0), ("neg", -1.5), ("nan", float("nan")), ("inf", float("inf"))):
            out.append((f"pixdim{ax}_{tag}", _patch(raw, "f", _PIXDIM + 4 * ax, v), "image", {"bad_spacing"}))
    # data offset
    out += [("vox_offset_past_end", _patch(raw, "f", _VOX_OFFSET, float(len(raw) + 64)), "image", TRUNC),
            ("vox_offset_plus16", _patch(raw, "f", _VOX_OFFSET, 368.0), "image", TRUNC),
            ("vox_offset_nan", _patch(raw, "f", _VOX_OFFSET, float("nan")), "image", {"bad_header"}),
            ("vox_offset_neg", _patch(raw, "f", _VOX_OFFSET, -352.0), "image", {"bad_header"}),
            ("vox_offset_huge", _patch(raw, "f", _VOX_OFFSET, 3.0e38), "image", {"bad_header", "truncated"})]
    # sform: skewed, scaled to zero, non-finite (qform off so the sform is used)
    srow = np.array(struct.unpack_from("<12f", raw, _SROW), dtype=np.float32).reshape(3, 4)
    sf = _patch(raw, "h", _SFORM_CODE, 1)
    for tag, fn in (("skew", lambda m: m.__setitem__((0, 1), m[1, 1] * 0.5 + 0.7)),
                    ("zero_col", lambda m: m.__setitem__((slice(None), 2), 0.0)),
                    ("nan", lambda m: m.__setitem__((1, 1), np.nan)),
                    ("inf_origin", lambda m: m.__setitem__((2, 3), np.inf)),
                    ("collinear", lambda m: m.__setitem__((slice(None), 1), m[:, 0]))):
        m = srow.copy()
        fn(m)
        b = _patch(sf, "12f", _SROW, *m.ravel().tolist())
        out.append((f"sform_{tag}", b, "image", {"bad_geometry"}))
    # qform used alone (sform off): non-finite quaternion / offsets; quaternion of norm > 1
    qf = _patch(_patch(raw, "h", _SFORM_CODE, 0), "h", _QFORM_CODE, 1)
    out += [("qform_nan", _patch(qf, "3f", _QUATERN, float("nan"), 0.0, 0.0), "image", {"bad_geometry"}),
            ("qoffset_inf", _patch(qf, "3f", _QOFFSET, 0.0, float("inf"), 0.0), "image", {"bad_geometry"}),
            ("qform_norm_gt1", _patch(qf, "3f", _QUATERN, 0.9, 0.9, 0.9), "image", {"bad_geometry", "bad_header"})]
    # voxel values: NaN / Inf in a float image; non-integer / negative labels
    out += _voxel_variants(raw, label_raw)
    return out


def _with_array(raw: bytes, arr_ijk: np.ndarray, datatype: int) -> bytes:
    """Header of ``raw`` with a new datatype and the given voxels (Fortran order, as NIfTI)."""
    bits = arr_ijk.dtype.itemsize * 8
    hdr = _patch(_patch(raw[:352], "h", _DATATYPE, datatype), "h", _BITPIX, bits)
    hdr = _patch(hdr, "ff", 112, 1.0, 0.0)  # scl_slope, scl_inter
    hdr = _patch(hdr, "f", _VOX_OFFSET, 352.0)
    return hdr + np.asarray(arr_ijk).astype(arr_ijk.dtype.newbyteorder("<")).tobytes(order="F")


def _array(raw: bytes) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.Nifti1Image.from_bytes(raw).dataobj)


def _voxel_variants(raw: bytes, label_raw: bytes) -> list[tuple[str, bytes, str, set[str]]]:
    img = _array(raw).astype(np.float32)
    lab = _array(label_raw).astype(np.float32)
    rng = np.random.default_rng(7)
    out = []
    for tag, val, n in (("nan1", np.nan, 1), ("nan_many", np.nan, 500), ("posinf", np.inf, 3),
                        ("neginf", -np.inf, 1), ("nan_corner", np.nan, 0)):
        a = img.copy()
        if n:
            idx = rng.choice(a.size, size=n, replace=False)
            a.flat[idx] = val
        else:
            a[-1, -1, -1] = val
        out.append((f"image_{tag}", _with_array(raw, a, 16), "image", {"non_finite"}))
    a64 = img.astype(np.float64)
    a64[3, 4, 5] = np.nan
    out.append(("image_nan_f64", _with_array(raw, a64, 64), "image", {"non_finite"}))
    one = lab.copy()
    one[np.unravel_index(int(np.flatnonzero(lab > 0)[0]), lab.shape)] = 0.5
    for tag, a in (("one_half", one), ("all_fractional", lab * 0.5 + 0.25), ("prob_map", lab * 0.37),
                   ("nan", np.where(lab > 0, np.nan, lab)), ("inf", np.where(lab == 1, np.inf, lab)),
                   ("neg_float", np.where(lab == 2, -1.0, lab))):
        out.append((f"label_{tag}", _with_array(label_raw, a.astype(np.float32), 16), "label",
                    {"non_integer_labels"}))
    neg = lab.astype(np.int16)
    neg[neg == 1] = -1
    out.append(("label_neg_int16", _with_array(label_raw, neg, 4), "label", {"non_integer_labels"}))
    neg32 = lab.astype(np.int32)
    neg32[0, 0, 0] = -5
    out.append(("label_neg_int32", _with_array(label_raw, neg32, 8), "label", {"non_integer_labels"}))
    return out


def _grid_variants(label_raw: bytes) -> list[tuple[str, bytes]]:
    """Labels that are valid alone but on another grid than the original (for ``pair`` cases)."""
    out = []
    for ax, tag in ((1, "x"), (2, "y"), (3, "z")):
        d = _dims(label_raw)
        lab = _array(label_raw)
        sl = [slice(None)] * 3
        sl[ax - 1] = slice(0, d[ax] - 1)
        cropped = np.ascontiguousarray(lab[tuple(sl)])
        b = _patch(label_raw[:352], "h", _DIM + 2 * ax, d[ax] - 1) + cropped.tobytes(order="F")
        out.append((f"grid_crop_{tag}", b))
    srow = np.array(struct.unpack_from("<12f", label_raw, _SROW), dtype=np.float32).reshape(3, 4)
    for tag, fn in (("shift_origin", lambda m: m.__setitem__((0, 3), m[0, 3] + 2.0)),
                    ("spacing_x", lambda m: m.__setitem__((slice(None), 0), m[:, 0] * 1.5)),
                    ("flip_y", lambda m: m.__setitem__((slice(None), 1), -m[:, 1])),
                    ("half_voxel", lambda m: m.__setitem__((2, 3), m[2, 3] + 0.5))):
        m = srow.copy()
        fn(m)
        b = _patch(_patch(label_raw, "h", _QFORM_CODE, 0), "h", _SFORM_CODE, 1)
        out.append((f"grid_{tag}", _patch(b, "12f", _SROW, *m.ravel().tolist())))
    # pixdim-only change with sform/qform off
    b = _patch(_patch(_patch(label_raw, "h", _QFORM_CODE, 0), "h", _SFORM_CODE, 0), "f", _PIXDIM + 4, 2.0)
    out.append(("grid_pixdim_only", b))
    return out


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def nifti_corpus(c: _Corpus, src: Sources) -> None:
    gz_img = src.image.read_bytes()
    raw = gzip.decompress(gz_img)
    label_raw = gzip.decompress(src.label.read_bytes())
    rng = np.random.default_rng(20240601)
    # truncations of the compressed file: header, middle, the very end (CRC / length trailer)
    n = len(gz_img)
    cuts = sorted({0, 1, 2, 9, 10, 11, 30, 100, 200} | {int(x) for x in rng.integers(12, n - 8, 14)}
                  | {n - 8, n - 5, n - 1})
    for k in cuts:
        c.add(f"trunc_gz_{k:06d}.nii.gz", gz_img[:k], "truncation", "image", TRUNC | ({"corrupt"} if k else set()))
    # truncations of the uncompressed file
    m = len(raw)
    cuts = sorted({0, 1, 4, 100, 347, 348, 351, 352, 353} | {int(x) for x in rng.integers(353, m - 1, 10)} | {m - 1})
    for k in cuts:
        c.add(f"trunc_nii_{k:06d}.nii", raw[:k], "truncation", "image", TRUNC)
    # gzip damage: flipped bytes in the deflate stream, damaged CRC / length, wrong gzip magic
    for i, pos in enumerate(sorted({int(x) for x in rng.integers(10, n - 8, 16)})):
        b = bytearray(gz_img)
        b[pos] ^= 0xFF if i % 2 else (1 << int(rng.integers(0, 8)))
        c.add(f"gzflip_{pos:06d}.nii.gz", bytes(b), "gzip", "image", GZ_DAMAGE)
    for tag, pos in (("crc0", n - 8), ("crc3", n - 5), ("isize0", n - 4), ("isize3", n - 1)):
        b = bytearray(gz_img)
        b[pos] ^= 0x5A
        c.add(f"gz_{tag}.nii.gz", bytes(b), "gzip", "image", GZ_DAMAGE)
    c.add("gz_method.nii.gz", gz_img[:2] + b"\x07" + gz_img[3:], "gzip", "image", GZ_DAMAGE)
    c.add("gz_trailing_garbage.nii.gz", gz_img + b"garbage!", "gzip", "image", GZ_DAMAGE)
    c.add("gz_double.nii.gz", _gz(gz_img), "gzip", "image", {"bad_magic"})
    c.add("raw_deflate.nii.gz", zlib.compress(raw), "gzip", "image", {"corrupt"})
    # wrong magic / not NIfTI at all
    c.add("magic_gz_wrong.nii.gz", b"\x1f\x8c" + gz_img[2:], "magic", "image", {"corrupt"})
    c.add("magic_nifti_wrong.nii.gz", _gz(_patch(raw, "4s", _MAGIC, b"XYZ\x00")), "magic", "image", {"bad_magic"})
    c.add("magic_nifti_wrong.nii", _patch(raw, "4s", _MAGIC, b"n+9\x00"), "magic", "image", {"bad_magic"})
    c.add("magic_pair.nii", _patch(raw, "4s", _MAGIC, b"ni1\x00"), "magic", "image", {"bad_magic"})
    c.add("sizeof_hdr.nii", _patch(raw, "i", 0, 349), "magic", "image", {"bad_magic"})
    c.add("png_named.nii.gz", b"\x89PNG\r\n\x1a\n" + bytes(400), "magic", "image", {"corrupt"})
    c.add("text_named.nii", b"hello, this is not an image\n" * 20, "magic", "image", {"bad_magic"})
    c.add("zeros.nii", bytes(1000), "magic", "image", {"bad_magic"})
    c.add("mha_named.nii", b"ObjectType = Image\nNDims = 3\n" + bytes(400), "magic", "image", {"bad_magic"})
    # header and voxel faults, each as .nii.gz and as .nii
    for name, data, kind, exp in _nifti_variants(raw, label_raw):
        c.add(f"hdr_{name}.nii.gz", _gz(data), "header" if not name.startswith(("image_", "label_")) else "voxels",
              kind, exp)
        c.add(f"hdr_{name}.nii", data, "header" if not name.startswith(("image_", "label_")) else "voxels", kind, exp)
    # labels on another grid than their reference (fine alone, a mismatch as a pair)
    for name, data in _grid_variants(label_raw):
        c.add(f"{name}.nii.gz", _gz(data), "grid", "pair", {"geometry_mismatch"}, ref=src.label)


def make_corpus(out_dir: str | Path, sources: Sources) -> list[FaultCase]:
    """Write every variant under ``out_dir``; return the cases (deterministic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = _Corpus(out)
    nifti_corpus(c, sources)
    from tests.system.faults.itk_faults import itk_corpus

    itk_corpus(c, sources)
    if sources.dicom is not None:
        from tests.system.faults.dicom_faults import dicom_corpus

        dicom_corpus(c, sources.dicom)
    return c.cases
