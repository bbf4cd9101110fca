"""Slide reading by resolution, tissue detection, tiling and `medseg wsi info/tile`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medseg.errors import InputError
from medseg.io.wsi import ArraySlide, Slide, open_slide
from medseg.wsi.tiling import load_tiles, save_tiles, tile_grid
from medseg.wsi.tissue import otsu_threshold, tissue_mask
from tests.paths import shared_path


def test_array_slide_read_mpp_is_block_mean(rng):
    a = rng.integers(0, 256, (64, 96, 3)).astype(np.uint8)
    s = ArraySlide(a, mpp=0.25)
    out = s.read_mpp((8, 16), (20, 10), mpp=0.5)  # 2x down: 2x2 block means
    ref = a[16:36, 8:48].astype(float).reshape(10, 2, 20, 2, 3).mean((1, 3))
    assert out.shape == (10, 20, 3)
    assert np.abs(out.astype(float) - ref).max() <= 1.0
    np.testing.assert_array_equal(s.read_mpp((0, 0), (5, 5), mpp=0.25), a[:5, :5])
    # outside the slide reads as white
    edge = s.read_level((90, 60), 0, (10, 10))
    assert (edge[4:, :] == 255).all() and (edge[:, 6:] == 255).all()
    np.testing.assert_array_equal(edge[:4, :6], a[60:64, 90:96])


class _Pyramid(Slide):
    def read_level(self, location, level, size):
        return np.zeros((size[1], size[0], 3), np.uint8)


def test_best_level_picks_coarsest_level_not_coarser_than_asked():
    s = _Pyramid([(4000, 4000), (1000, 1000), (250, 250)], [1.0, 4.0, 16.0], 0.25)
    assert [s.best_level(m) for m in (0.25, 0.5, 1.0, 3.9, 4.0, 40.0)] == [0, 0, 1, 1, 2, 2]
    assert s.read_mpp((0, 0), (7, 3), mpp=3.0).shape == (3, 7, 3)


def test_open_plain_images_and_bad_files(tmp_path, rng):
    img = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="--mpp") as e:
        open_slide(tmp_path / "a.png")
    assert e.value.code == "no_mpp"
    s = open_slide(tmp_path / "a.png", mpp=0.5)
    assert s.dimensions == (40, 30) and s.mpp == 0.5
    np.testing.assert_array_equal(s.read_level((0, 0), 0, (40, 30)), img)
    # TIFF with resolution in pixels per centimetre -> um/px
    Image.fromarray(img).save(tmp_path / "r.tif", dpi=(20000, 20000), resolution_unit=3)
    t = Image.open(tmp_path / "r.tif"); t.tag_v2[296] = 3
    t.save(tmp_path / "c.tif", tiffinfo={296: 3, 282: 20000.0, 283: 20000.0})
    assert open_slide(tmp_path / "c.tif").mpp == pytest.approx(0.5)
    # truncated PNG, empty and garbage slides
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        open_slide(tmp_path / "cut.png", mpp=0.5)
    assert e.value.code == "unreadable" and "cut.png" in str(e.value)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "junk.ndpi").write_bytes(b"not a slide" * 100)
    with pytest.raises(InputError) as e:
        open_slide(tmp_path / "junk.ndpi")
    assert e.value.code in ("unsupported", "unreadable")
    with pytest.raises(InputError, match="no such"):
        open_slide(tmp_path / "missing.svs")


def test_otsu_matches_simpleitk(rng):
    sitk = pytest.importorskip("SimpleITK")
    v = np.concatenate([rng.normal(50, 10, 5000), rng.normal(170, 15, 3000)]).astype(np.float32)
    f = sitk.OtsuThresholdImageFilter()
    f.SetNumberOfHistogramBins(256)
    f.Execute(sitk.GetImageFromArray(v.reshape(80, 100)))
    ref = f.GetThreshold()
    assert abs(otsu_threshold(v) - ref) <= (v.max() - v.min()) / 256 * 1.01


def _he_like(rng):
    img = np.clip(rng.normal(238, 4, (120, 120, 3)), 0, 255).astype(np.uint8)  # glass
    img[20:90, 20:100] = np.clip(rng.normal((200, 90, 170), 12, (70, 80, 3)), 0, 255)  # stained tissue
    img[45:60, 50:65] = 240            # a hole (lumen), 15 px = 240 um at 16 um/px
    img[105:107, 5:7] = (150, 40, 120)  # a speck of debris, 4 px = 0.001 mm^2
    return img


def test_tissue_mask_brightfield_keeps_holes_drops_specks(rng):
    img = _he_like(rng)
    m = tissue_mask(img, mpp=16.0, min_area_mm2=0.01, open_um=0, close_um=0)
    truth = np.zeros((120, 120), bool); truth[20:90, 20:100] = True; truth[45:60, 50:65] = False
    assert (m == truth).mean() > 0.995
    assert not m[46:59, 51:64].any() and not m[105:107, 5:7].any()
    m2 = tissue_mask(img, mpp=16.0, mode="brightfield")
    assert (m2 == truth).mean() > 0.99
    blank = np.clip(rng.normal(240, 3, (60, 60, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(blank, mpp=16.0).any()


def test_tissue_mask_fluorescence(rng):
    img = rng.poisson(2, (100, 100, 3)).astype(np.uint8)
    img[10:70, 10:80, 2] = rng.poisson(40, (60, 70))  # DAPI-like signal on black
    m = tissue_mask(img, mpp=8.0, mode="auto", min_area_mm2=0.0)
    truth = np.zeros((100, 100), bool); truth[10:70, 10:80] = True
    assert (m == truth).mean() > 0.97


def test_tile_grid_by_hand(tmp_path):
    mask = np.zeros((10, 10), bool); mask[:, :5] = True  # left half, 16 level-0 px per mask px
    kw = dict(mask_mpp=8.0, slide_dimensions=(160, 160), slide_mpp=0.5, mpp=1.0, tile_size=32)
    g = tile_grid(mask, min_tissue=0.0, **kw)
    assert g.extent_level0 == 64 and sorted(map(tuple, g.coords)) == [(0, 0), (0, 64), (64, 0), (64, 64)]
    np.testing.assert_allclose(sorted(g.tissue_fraction), [0.25, 0.25, 1.0, 1.0])
    g2 = tile_grid(mask, min_tissue=0.5, **kw)
    assert sorted(map(tuple, g2.coords)) == [(0, 0), (0, 64)]
    g3 = tile_grid(mask, min_tissue=0.0, overlap=16, **kw)  # stride 32 level-0 px -> 4 x 4
    assert len(g3) == 16
    save_tiles(tmp_path / "t.h5", g2, extra={"slide": "x"})
    back, meta = load_tiles(tmp_path / "t.h5")
    np.testing.assert_array_equal(back.coords, g2.coords)
    assert meta["slide"] == "x" and back.mpp == 1.0 and back.extent_level0 == 64
    with pytest.raises(InputError, match="finer"):
        tile_grid(mask, min_tissue=0.0, **{**kw, "mpp": 0.25})


def test_cli_tile_batch_reports_bad_slides(tmp_path, rng):
    from medseg.cli.main import main
    Image.fromarray(np.kron(_he_like(rng), np.ones((8, 8, 1), np.uint8))).save(tmp_path / "good.png")
    Image.fromarray(np.full((200, 200, 3), 242, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    rc = main(["wsi", "tile", str(tmp_path / "good.png"), str(tmp_path / "bad.png"), str(tmp_path / "blank.png"),
               "--out", str(out), "--mpp", "4", "--tile-size", "32", "--slide-mpp", "2"])
    assert rc == 1
    rows = {r["slide"]: r for r in json.loads((out / "tiling.json").read_text())}
    assert rows["bad"]["status"] == "error:unreadable"
    assert rows["blank"]["status"] == "no_tissue" and rows["blank"]["n_tiles"] == 0
    good = json.loads((out / "good" / "summary.json").read_text())
    assert good["status"] == "ok" and good["n_tiles"] > 0
    # tissue 70x80 px minus 15x15 hole at 16 um/px, scaled x8 to 2 um/px
    assert good["tissue_area_mm2"] == pytest.approx((70 * 80 - 225) * 0.016 ** 2, rel=0.03)
    assert (out / "good" / "mask.png").is_file() and (out / "good" / "tiles.h5").is_file()


def test_real_slides_info_and_tiles(tmp_path):
    from medseg.wsi.tile_slides import TilingParams, tile_slides
    svs = shared_path("wsi", "CMU-1-Small-Region.svs")
    s = open_slide(svs)
    assert s.mpp == pytest.approx(0.499) and s.objective_power == 20 and s.level_count == 1
    assert set(s.associated_images()) == {"label", "macro", "thumbnail"}
    ndpi = shared_path("wsi", "test3-DAPI-2-387.ndpi")
    n = open_slide(ndpi)
    assert n.level_count == 7 and n.best_level(0.5) == 1 and n.best_level(8.0) == 5
    rows = tile_slides([svs, ndpi], tmp_path, TilingParams(mpp=0.5, tile_size=256))
    for r in rows:
        assert r["status"] == "ok" and r["n_tiles"] > 0
        w, h = r["dimensions"]
        assert 0 < r["tissue_area_mm2"] < w * h * r["slide_mpp"] ** 2 / 1e6


def test_truncated_real_slides_are_clear_errors(tmp_path):
    from medseg.wsi.tile_slides import TilingParams, tile_slides
    good = shared_path("wsi", "CMU-1-Small-Region.svs")
    for name, src in (("cut_a.svs", good), ("cut_b.ndpi", shared_path("wsi", "test3-DAPI-2-387.ndpi"))):
        (tmp_path / name).write_bytes(src.read_bytes()[:1_000_000])
    rows = tile_slides([tmp_path / "cut_a.svs", good, tmp_path / "cut_b.ndpi"], tmp_path / "out",
                       TilingParams(mpp=0.5, tile_size=256))
    assert rows[0]["status"].startswith("error:") and "truncated" in rows[0]["error"]
    assert rows[1]["status"] == "ok"
    assert rows[2]["status"].startswith("error:") and rows[2]["status"] != "error:duplicate_name"
