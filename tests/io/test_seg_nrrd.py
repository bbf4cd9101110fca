"""Slicer .seg.nrrd: header fields read with pynrrd (not ITK), LPS geometry of the input grid, voxels =
the label map; segment names, colours, codes from io.segments."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import read_volume
from medseg.io.seg_nrrd import write_seg_nrrd
from medseg.io.segments import PALETTE, describe_labels, label_name
from medseg.volume import Volume
from tests.inference.helpers import oblique_lps_affine

nrrd = pytest.importorskip("nrrd")


def _oblique_label():
    from medseg.volume import affine_to_geometry

    spacing, origin, direction = affine_to_geometry(oblique_lps_affine(spacing=(2.0, 0.9, 1.1)))
    lab = np.zeros((6, 7, 8), np.uint8)
    lab[1:3, 2:5, 3:7] = 1          # z 1-2, y 2-4, x 3-6
    lab[4, 0, 0] = 3
    return Volume(lab, spacing, origin, direction, is_label=True)


def test_header_geometry_and_voxels(tmp_path):
    label = _oblique_label()
    segs = describe_labels({0: "background", 1: "Liver", 2: "spleen", 3: "right kidney"})
    p = write_seg_nrrd(label, tmp_path / "case.seg.nrrd", segments=segs)
    data, h = nrrd.read(str(p))
    assert h["space"] == "left-posterior-superior" and h["type"] in ("uint8", "unsigned char")
    # pynrrd gives (x, y, z) data; space directions rows = index axes i, j, k in LPS
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), label.array)
    flip = np.diag([-1.0, -1.0, 1.0])
    a = label.affine
    np.testing.assert_allclose(np.asarray(h["space directions"]), (flip @ a[:3, [2, 1, 0]]).T, atol=1e-9)
    np.testing.assert_allclose(h["space origin"], flip @ a[:3, 3], atol=1e-9)
    assert h["Segmentation_MasterRepresentation"] == "Binary labelmap"
    want = [(1, "Liver", "10200004", "3 6 2 4 1 2"), (2, "spleen", "78961009", "0 -1 0 -1 0 -1"),
            (3, "right kidney", "64033007", "0 0 0 0 4 4")]
    for i, (value, name, code, extent) in enumerate(want):
        k = f"Segment{i}_"
        assert h[k + "Name"] == name and h[k + "LabelValue"] == str(value) and h[k + "Layer"] == "0"
        assert h[k + "ID"] == f"Segment_{value}" and h[k + "Extent"] == extent
        np.testing.assert_allclose([float(c) for c in h[k + "Color"].split()], np.asarray(PALETTE[value - 1]) / 255,
                                   atol=1e-5)
        assert f"SCT^{code}^" in h[k + "Tags"] and h[k + "Tags"].startswith("TerminologyEntry:")
    assert "SCT^24028007^Right" in h["Segment2_Tags"]
    assert not any(k.startswith("Segment3_") for k in h)
    back = read_volume(p, kind="label")        # medseg (ITK) reads it back on the same grid
    np.testing.assert_array_equal(back.array, label.array)
    assert back.same_grid(label)


def test_label_names_without_text():
    assert label_name(3, None) == "label 3" and label_name(2, "  ") == "label 2" and label_name(1, 5) == "label 1"
    assert label_name(1, "left  atrium") == "left atrium"
    segs = describe_labels({0: "bg", 1: "1", 2: "left_atrium", 3: "Tumour", 4: "whatever"}, bundle_name="mymodel")
    assert segs[1].name == "label 1" and not segs[1].known and segs[1].type.meaning == "Tissue"
    assert segs[2].type.value == "82471001" and segs[2].modifier is None          # left atrium: one concept
    assert segs[3].category.value == "49755003"                                    # morphologically abnormal
    assert not segs[4].known
    assert describe_labels({1: "anterior"}, bundle_name="hippocampus_unet")[1].type.meaning == "Hippocampus"
