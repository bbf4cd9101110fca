"""Hostile slide values and label counts (issue 13): every mpp checked where it enters, a bad slide
fails alone, damaged pyramid level tables reported, and 8,000 labels in one case neither hang the
report nor resist SIGTERM."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError, InputError
from medseg.io.wsi import ArraySlide, check_mpp, check_pyramid, open_slide
from tests.paths import REPO, shared_path
from tests.system.faults import bombs

BAD_MPP = [0, -1, math.nan, math.inf, -math.inf, 1e6, 1e-9, "abc"]


@pytest.mark.parametrize("value", BAD_MPP, ids=[str(v) for v in BAD_MPP])
def test_every_bad_mpp_is_refused_where_it_enters(tmp_path, value):
    from medseg.wsi.tile_slides import TilingParams

    assert pytest.raises(InputError, check_mpp, value).value.code == "bad_mpp"
    png = bombs.png_bomb(tmp_path / "s.png", width=64, height=48)
    err = pytest.raises(InputError, open_slide, png, mpp=value).value       # --slide-mpp / --mpp of a slide
    assert err.code == "bad_mpp" and str(png) in str(err)
    with pytest.raises(ConfigError):
        TilingParams(mpp=value)                                               # --mpp of tiling: a usage error
    with pytest.raises(ConfigError):
        TilingParams(slide_mpp=value)
    if isinstance(value, float):
        assert pytest.raises(InputError, ArraySlide, np.zeros((4, 4, 3), np.uint8), mpp=value).value.code == "bad_mpp"


def test_good_mpp_values_pass():
    assert check_mpp(0.25) == 0.25 and check_mpp("0.5") == 0.5 and check_mpp(8) == 8.0


def test_pyramid_tables_by_hand():
    check_pyramid([(1000, 800), (500, 400), (250, 200)], [1.0, 2.0, 4.0])
    check_pyramid([(3968, 4864), (1984, 2432), (62, 76)], [1.0, 2.0, 64.0])
    check_pyramid([(1001, 799), (500, 399), (125, 99)], [1.0, 2.002, 8.01])      # rounding of odd sizes
    for dims, ds in [([(1000, 800), (500, 800)], [1.0, 2.0]),                    # wrong aspect
                     ([(1000, 800), (250, 200)], [1.0, 2.0]),                    # size disagrees with downsample
                     ([(1000, 800), (2000, 1600)], [1.0, 0.5]),                  # larger than level 0
                     ([(1000, 800), (0, 0)], [1.0, 2.0]),
                     ([(1000, 800), (500, 400)], [1.0, math.nan])]:
        assert pytest.raises(InputError, check_pyramid, dims, ds).value.code == "damaged_pyramid", dims


@pytest.mark.shared
def test_slide_with_inf_mpp_metadata_fails_alone_and_the_batch_goes_on(tmp_path):
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    good = shared_path("wsi", "CMU-1-Small-Region.svs")
    raw = good.read_bytes()
    assert b"MPP = 0.4990" in raw
    bad = tmp_path / "bad_mpp.svs"
    bad.write_bytes(raw.replace(b"MPP = 0.4990", b"MPP = inf   "))
    zero = tmp_path / "zero_mpp.svs"
    zero.write_bytes(raw.replace(b"MPP = 0.4990", b"MPP = 0     "))
    rows = tile_slides([bad, zero, good], tmp_path / "out", TilingParams(mpp=2.0, tile_size=128))
    by = {r["slide"]: r for r in rows}
    assert by["bad_mpp"]["status"] == "error:bad_mpp" and "mpp" in by["bad_mpp"]["error"]
    assert by["zero_mpp"]["status"] == "error:bad_mpp"
    assert by["CMU-1-Small-Region"]["status"] == "ok" and by["CMU-1-Small-Region"]["n_tiles"] > 0


class _FakeHandle:
    """What OpenSlide reports for a slide whose level 1 was replaced by an image of another aspect
    (OpenSlide itself opens such generic-TIFF / SVS files; its NDPI reader refuses them already)."""

    def __init__(self, dims, ds, black_level=None):
        self.level_dimensions, self.level_downsamples = dims, ds
        self.black_level = black_level
        self.properties = {"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5", "openslide.vendor": "generic-tiff"}
        self.associated_images: dict = {}
        self.closed = False

    def read_region(self, loc, level, size):
        from PIL import Image

        colour = (0, 0, 0, 255) if level == self.black_level else (200, 100, 100, 255)
        return Image.new("RGBA", size, colour)

    def close(self):
        self.closed = True


def test_pyramid_level_with_a_wrong_aspect_is_reported(tmp_path):
    from medseg.io.wsi import _wrap_openslide

    good = _FakeHandle([(4000, 3000), (2000, 1500), (1000, 750)], [1.0, 2.0, 4.0])
    assert _wrap_openslide(good, tmp_path / "s.tif", None).level_count == 3
    bad = _FakeHandle([(4000, 3000), (2000, 3000), (1000, 750)], [1.0, 2.0, 4.0])
    err = pytest.raises(InputError, _wrap_openslide, bad, tmp_path / "s.tif", None).value
    assert err.code == "damaged_pyramid" and "level 1" in str(err) and bad.closed


def test_pyramid_level_replaced_by_black_is_reported(tmp_path):
    from medseg.io.wsi import _wrap_openslide

    dims, ds = [(4000, 3000), (2000, 1500), (1000, 750), (250, 188)], [1.0, 2.0, 4.0, 16.0]
    for black in (0, 1, 2):
        h = _FakeHandle(dims, ds, black_level=black)
        err = pytest.raises(InputError, _wrap_openslide, h, tmp_path / "s.tif", None).value
        assert err.code == "damaged_pyramid" and f"level {black} " in str(err), black
    assert _wrap_openslide(_FakeHandle(dims, ds), tmp_path / "s.tif", None).level_count == 4


@pytest.mark.shared
def test_real_slides_pass_the_pyramid_checks():
    for name in ("CMU-1-Small-Region.svs", "test3-DAPI-2-387.ndpi", "test3-TRITC-2-560.ndpi"):
        assert open_slide(shared_path("wsi", name)).level_count >= 1


# -------------------------------------------------------------------------------------- 8000 labels
def _many_labels(root: Path, n: int = 8000) -> Path:
    from tests.inference.helpers import save_nifti

    ref = root / "ref"
    ref.mkdir(parents=True)
    side = math.ceil(n ** (1 / 3))
    a = np.zeros(side ** 3, np.uint16)
    a[:n] = np.arange(1, n + 1)
    save_nifti(a.reshape(side, side, side), ref / "c.nii.gz", np.eye(4))
    return ref


def _evaluate_cmd(ref: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medseg", "evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(out),
            "--no-progress"]


@pytest.mark.slow
def test_8000_labels_in_one_case_finish_the_report(tmp_path):
    """Before: one box per label was drawn (1,000 labels took 2 minutes, 8,000 never ended). The
    timeout is a hang detector, not a speed measurement."""
    ref = _many_labels(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run(_evaluate_cmd(ref, out), capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["labels"]) == 8000 and summary["meta"]["labels"][0] == 1   # label 1 kept (no background)
    assert "box plots show the first 40" in (out / "report.html").read_text()


def test_sigterm_stops_evaluate_of_8000_labels(tmp_path):
    """SIGTERM as soon as the run holds its output folder (it is scoring 8,000 labels then): it must end
    within 30 s with exit code 143, write no metrics and release the folder."""
    ref = _many_labels(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(_evaluate_cmd(ref, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lock = out / ".medseg-batch.lock"
    t0 = time.monotonic()
    while not lock.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.02)
    assert proc.poll() is None, "evaluate ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("evaluate did not stop within 30 s of SIGTERM")
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM" in err
    assert not (out / "metrics.csv").exists() and not lock.exists()
