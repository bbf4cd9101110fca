"""``medseg evaluate`` on 2D masks: PNG with a given pixel spacing, 2D NIfTI; bad 2D inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medseg.cli.main import main
from medseg.report.writers import read_metrics_csv


def _sd_pkg():
    np.Inf = np.inf  # noqa: NPY201 -- surface-distance 0.1 still uses np.Inf (removed in NumPy 2)
    import surface_distance

    return surface_distance


def _masks(rng, n=3, shape=(40, 50)):
    from scipy import ndimage

    out = []
    for _ in range(n):
        a = ndimage.binary_opening(rng.random(shape) > 0.3, iterations=2)
        b = ndimage.binary_opening(rng.random(shape) > 0.3, iterations=2)
        out.append((a, b))
    return out


def _evaluate(pred, ref, out, *extra):
    return main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--no-progress", *extra])


def test_png_masks_with_spacing_match_surface_distance_2d(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    pairs = _masks(rng)
    for i, (a, b) in enumerate(pairs):
        Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "r" / f"c{i}.png")
        Image.fromarray(b.astype(np.uint8)).save(tmp_path / "p" / f"c{i}.png")  # 0/1 and 0/255 both binary
    rc = _evaluate(tmp_path / "p", tmp_path / "r", tmp_path / "o", "--pixel-spacing-mm", "0.8,1.3",
                   "--metrics", "dice,hd95,nsd,assd,hd100", "--nsd-tolerance-mm", "2")
    assert rc == 0
    rows = read_metrics_csv(tmp_path / "o" / "metrics.csv")
    sdp = _sd_pkg()
    for i, (a, b) in enumerate(pairs):
        r = next(x for x in rows if x["case"] == f"c{i}")
        sd = sdp.compute_surface_distances(a, b, (0.8, 1.3))
        assert r["hd95_mm"] == pytest.approx(sdp.compute_robust_hausdorff(sd, 95), abs=1e-9)
        assert r["hd100_mm"] == pytest.approx(sdp.compute_robust_hausdorff(sd, 100), abs=1e-9)
        assert r["nsd"] == pytest.approx(sdp.compute_surface_dice_at_tolerance(sd, 2.0), abs=1e-9)
        d_rp, d_pr = sdp.compute_average_surface_distance(sd)
        la, lb = sd["surfel_areas_gt"].sum(), sd["surfel_areas_pred"].sum()
        assert r["assd_mm"] == pytest.approx((d_rp * la + d_pr * lb) / (la + lb), rel=1e-12)
        assert r["dice"] == pytest.approx(sdp.compute_dice_coefficient(a, b))


def test_2d_nifti_uses_2d_definitions(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(2)
    (a, b), = _masks(rng, 1)
    aff = np.diag([1.25, 0.75, 1.0, 1.0])  # NIfTI axes (x, y): array (y, x) has spacing (0.75, 1.25)
    nib.save(nib.Nifti1Image(a.T.astype(np.uint8), aff), tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(b.T.astype(np.uint8), aff), tmp_path / "pred.nii.gz")
    assert _evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "o") == 0
    (r,) = read_metrics_csv(tmp_path / "o" / "metrics.csv")
    sdp = _sd_pkg()
    sd = sdp.compute_surface_distances(a, b, (0.75, 1.25))
    assert r["hd95_mm"] == pytest.approx(sdp.compute_robust_hausdorff(sd, 95), abs=1e-6)
    assert r["nsd"] == pytest.approx(sdp.compute_surface_dice_at_tolerance(sd, 1.0), abs=1e-6)


def test_png_without_spacing_is_a_clear_error(tmp_path, caplog):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "p" / "c.png")
    Image.fromarray(m).save(tmp_path / "r" / "c.png")
    assert _evaluate(tmp_path / "p", tmp_path / "r", tmp_path / "o") != 0
    assert "--pixel-spacing-mm" in caplog.text and "c.png" in caplog.text


def test_png_with_more_than_two_values_is_reported(tmp_path, caplog):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 255
    Image.fromarray(m).save(tmp_path / "r" / "good.png")
    Image.fromarray(m).save(tmp_path / "p" / "good.png")
    Image.fromarray(m).save(tmp_path / "r" / "bad.png")
    three = m.copy()
    three[6, 6] = 7
    Image.fromarray(three).save(tmp_path / "p" / "bad.png")
    assert _evaluate(tmp_path / "p", tmp_path / "r", tmp_path / "o", "--pixel-spacing-mm", "1") == 1
    rows = {r["case"]: r for r in read_metrics_csv(tmp_path / "o" / "metrics.csv")}
    assert rows["good"]["dice"] == 1.0 and rows["bad"]["status"] == "error:not_binary"
    assert "bad.png" in caplog.text and "3 distinct values (0, 7, 255)" in caplog.text
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["meta"]["failed"] == {"bad": "error:not_binary"}
    # read as label maps instead, the 7 becomes a label of its own
    assert _evaluate(tmp_path / "p", tmp_path / "r", tmp_path / "o2", "--pixel-spacing-mm", "1",
                     "--mask-labels") == 0


def test_png_report_with_images(tmp_path):
    rng = np.random.default_rng(4)
    for d in ("p", "r", "img"):
        (tmp_path / d).mkdir()
    for i, (a, b) in enumerate(_masks(rng, 2)):
        Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "r" / f"c{i}.png")
        Image.fromarray((b * 255).astype(np.uint8)).save(tmp_path / "p" / f"c{i}.png")
        Image.fromarray((rng.random(a.shape) * 200).astype(np.uint8)).save(tmp_path / "img" / f"c{i}.png")
    assert _evaluate(tmp_path / "p", tmp_path / "r", tmp_path / "o", "--pixel-spacing-mm", "0.5",
                     "--images", str(tmp_path / "img")) == 0
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Label 1: worst" in html and "cases/c0.html" in html
    page = (tmp_path / "o" / "cases" / "c1.html").read_text()
    assert "data:image/png;base64," in page and "No image given" not in page
