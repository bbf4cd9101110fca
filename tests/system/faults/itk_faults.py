"""Damaged MetaImage (.mha) and NRRD (.nrrd) variants of a real volume."""

from __future__ import annotations

import numpy as np

TRUNC = {"truncated"}


def _split(data: bytes, end_marker: bytes) -> tuple[bytes, bytes]:
    i = data.index(end_marker) + len(end_marker)
    return data[:i], data[i:]


def _mha_variants(header: bytes) -> list[tuple[str, bytes, set[str]]]:
    def sub(key: bytes, value: bytes) -> bytes:
        lines = header.split(b"\n")
        return b"\n".join(ln if not ln.startswith(key + b" =") else key + b" = " + value for ln in lines)

    return [
        ("dimsize_zero", sub(b"DimSize", b"34 0 35"), {"bad_header", "unreadable", "truncated"}),
        ("dimsize_double", sub(b"DimSize", b"68 52 35"), TRUNC),
        ("dimsize_neg", sub(b"DimSize", b"34 -52 35"), {"bad_header", "unreadable", "truncated"}),
        ("ndims_2", sub(b"NDims", b"2"), {"not_3d", "unreadable", "truncated", "bad_header", "bad_geometry"}),
        ("ndims_4", _four_d(sub), {"not_3d", "truncated"}),
        ("spacing_zero", sub(b"ElementSpacing", b"1 0 1"), {"bad_spacing"}),
        ("spacing_neg", sub(b"ElementSpacing", b"1 1 -2"), {"bad_spacing"}),
        ("spacing_nan", sub(b"ElementSpacing", b"nan 1 1"), {"bad_spacing", "unreadable"}),
        ("spacing_inf", sub(b"ElementSpacing", b"1 inf 1"), {"bad_spacing", "unreadable"}),
        ("spacing_text", sub(b"ElementSpacing", b"one two three"), {"bad_spacing", "unreadable", "bad_header"}),
        ("eltype_bogus", sub(b"ElementType", b"MET_BOGUS"), {"unreadable", "bad_header"}),
        ("eltype_double", sub(b"ElementType", b"MET_DOUBLE"), TRUNC),
        ("channels_3", header.replace(b"ElementType", b"ElementNumberOfChannels = 3\nElementType"),
         {"not_3d", "truncated"}),
        ("matrix_skew", sub(b"TransformMatrix", b"1 0.5 0 0 1 0 0 0 1"), {"bad_geometry"}),
        ("matrix_singular", sub(b"TransformMatrix", b"1 0 0 1 0 0 0 0 1"), {"bad_geometry"}),
        ("matrix_nan", sub(b"TransformMatrix", b"nan 0 0 0 1 0 0 0 1"), {"bad_geometry", "unreadable"}),
        ("matrix_scaled", sub(b"TransformMatrix", b"2 0 0 0 1 0 0 0 1"), {"bad_geometry"}),
        ("offset_nan", sub(b"Offset", b"nan 0 0"), {"bad_geometry", "unreadable"}),
        ("datafile_missing", sub(b"ElementDataFile", b"does_not_exist.raw"), {"unreadable", "truncated"}),
        ("magic", b"Garbage = Yes\n" + header.split(b"\n", 1)[1].replace(b"NDims", b"XDims"),
         {"bad_magic", "unreadable", "bad_header"}),
    ]


def _four_d(sub) -> bytes:
    h = sub(b"NDims", b"4")
    lines = h.split(b"\n")
    fix = {b"DimSize": b"34 52 35 2", b"ElementSpacing": b"1 1 1 1", b"Offset": b"-1 -1 1 0",
           b"CenterOfRotation": b"0 0 0 0", b"TransformMatrix": b"-1 0 0 0 0 -1 0 0 0 0 1 0 0 0 0 1"}
    out = []
    for ln in lines:
        key = ln.split(b" =")[0]
        out.append(key + b" = " + fix[key] if key in fix else ln)
    return b"\n".join(out)


def _nrrd_variants(header: bytes) -> list[tuple[str, bytes, set[str]]]:
    def sub(key: bytes, value: bytes) -> bytes:
        lines = header.split(b"\n")
        return b"\n".join(ln if not ln.startswith(key + b":") else key + b": " + value for ln in lines)

    return [
        ("magic", header.replace(b"NRRD0004", b"NRRX0004", 1), {"bad_magic", "unreadable"}),
        ("sizes_zero", sub(b"sizes", b"34 0 35"), {"bad_header", "unreadable", "truncated"}),
        ("sizes_double", sub(b"sizes", b"34 104 35"), TRUNC),
        ("dimension_4", sub(b"dimension", b"4").replace(b"sizes: 34 52 35", b"sizes: 34 52 35 2")
         .replace(b"space directions: (-1,0,0) (0,-1,0) (0,0,1)", b"space directions: (-1,0,0) (0,-1,0) (0,0,1) none")
         .replace(b"kinds: domain domain domain", b"kinds: domain domain domain list"), {"not_3d", "truncated"}),
        ("dir_zero", sub(b"space directions", b"(-1,0,0) (0,0,0) (0,0,1)"), {"bad_spacing", "bad_geometry",
                                                                            "unreadable"}),
        ("dir_skew", sub(b"space directions", b"(-1,0,0) (0.5,-1,0) (0,0,1)"), {"bad_geometry"}),
        ("dir_nan", sub(b"space directions", b"(nan,0,0) (0,-1,0) (0,0,1)"), {"bad_geometry", "bad_spacing",
                                                                             "unreadable"}),
        ("dir_collinear", sub(b"space directions", b"(-1,0,0) (-1,0,0) (0,0,1)"), {"bad_geometry"}),
        ("type_bogus", sub(b"type", b"quaternion"), {"unreadable", "bad_header"}),
        ("type_double", sub(b"type", b"double"), {"truncated", "corrupt"}),
        ("encoding_bogus", sub(b"encoding", b"zip-ish"), {"unreadable", "bad_header"}),
        ("origin_nan", sub(b"space origin", b"(nan,0,0)"), {"bad_geometry", "unreadable"}),
    ]


def itk_corpus(c, src) -> None:
    """MetaImage (compressed and raw) and NRRD variants of ``src.image``."""
    import tempfile
    from pathlib import Path

    from medseg.io import read_volume
    from medseg.io.itk import write_itk

    vol = read_volume(src.image)
    rng = np.random.default_rng(99)
    with tempfile.TemporaryDirectory() as d:
        originals = {}
        for name, compress in (("z.mha", True), ("raw.mha", False), ("z.nrrd", True), ("raw.nrrd", False)):
            write_itk(vol, Path(d) / name, compress=compress)
            originals[name] = (Path(d) / name).read_bytes()
    for name, data in originals.items():
        base = name.replace(".", "_")
        ext = "." + name.split(".")[1]
        marker = b"ElementDataFile = LOCAL\n" if ext == ".mha" else b"\n\n"
        header, body = _split(data, marker)
        n = len(data)
        cuts = sorted({0, 5, len(header) // 2, len(header), len(header) + 1}
                      | {int(x) for x in rng.integers(len(header) + 2, n - 1, 6)} | {n - 1})
        for k in cuts:
            c.add(f"{base}_trunc_{k:06d}{ext}", data[:k], "truncation", "image", TRUNC | {"corrupt", "bad_magic",
                                                                                       "unreadable"} if k < len(header)
                  else TRUNC | ({"corrupt"} if name.startswith("z") else set()))
        if name.startswith("z"):
            for pos in sorted({int(x) for x in rng.integers(len(header) + 12, n - 8, 4)}):
                b = bytearray(data)
                b[pos] ^= 0xFF
                c.add(f"{base}_flip_{pos:06d}{ext}", bytes(b), "gzip", "image", {"corrupt", "truncated"})
        variants = _mha_variants(header) if ext == ".mha" else _nrrd_variants(header)
        for tag, hdr, exp in variants:
            if name.startswith("raw") and tag in ("channels_3",):
                continue
            c.add(f"{base}_{tag}{ext}", hdr + body, "header", "image", exp)
