"""The `make demo` whole-slide step: the shipped demo bundle on the shipped sample slide writes a
legible attention heatmap PNG of the heatmap thumbnail's size (needs openslide; skips without)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.paths import SAMPLES

SLIDE = SAMPLES / "wsi" / "CMU-1-Small-Region.svs"
BUNDLE = SAMPLES / "wsi" / "demo_bundle"


def test_demo_wsi_heatmap(tmp_path, capsys):
    openslide = pytest.importorskip("openslide")
    from PIL import Image

    from medseg.cli.main import main

    out = tmp_path / "demo_wsi"
    # the Makefile's demo command, on the folder as shipped
    rc = main(["wsi", "predict", "--model", str(BUNDLE), "--input", str(SLIDE.parent), "--output", str(out),
               "--device", "cpu", "--workers", "0", "--top-k", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    png = out / "CMU-1-Small-Region" / "heatmap.png"
    assert f"attention heatmap: {png}" in text
    assert "MADE-UP labels" in text and "not a diagnosis" in text

    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["slide"] for r in rows] == ["CMU-1-Small-Region"] and rows[0]["status"] == "ok"
    assert 0.0 <= float(rows[0]["probability"]) <= 1.0

    # size worked out from the slide itself: long side scaled to 1024 px (HEATMAP_SIDE)
    s = openslide.OpenSlide(str(SLIDE))
    w0, h0 = s.dimensions  # 2220 x 2967
    s.close()
    f = 1024 / max(w0, h0)
    expect = (round(w0 * f), round(h0 * f))
    assert expect == (766, 1024)
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == expect
        heat = np.asarray(im)
    # colour bar in the bottom-left corner: white box holding the blue -> red ramp
    box = heat[-50:, :220]
    assert (box == 255).all(-1).mean() > 0.5
    ramp = heat[heat.shape[0] - 25, 8:208]  # middle row of the 10-px ramp (box 42 px high, 4 px margins)
    assert ramp[0, 2] > ramp[0, 0] + 100 and ramp[-1, 0] > ramp[-1, 2] + 100  # starts blue, ends red
    # the overlay tints the tissue tiles (162 tiles of ~39 px square = ~31 % of the image)
    from medseg.io.wsi import open_slide
    from medseg.wsi.predict import heatmap_mpp

    sl = open_slide(SLIDE)
    thumb = sl.thumbnail(mpp=heatmap_mpp(sl, 8.0))
    sl.close()
    assert thumb.shape == heat.shape
    changed = (np.abs(heat.astype(int) - thumb).max(-1) > 10)[:-50]
    assert 0.15 < changed.mean() < 0.6
    assert len(list((out / "CMU-1-Small-Region" / "top_tiles").glob("rank*.png"))) == 2
