"""The evaluation report with images: worst / median / best cases per label, one page per case,
offline (no external resource), checked in a real headless browser when Debian's chromium is there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.report.case_pages import pick_cases
from medseg.report.images import largest_error_point
from tests.paths import SAMPLES

HIPPO = SAMPLES / "hippocampus"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "eval"
    rc = main(["evaluate", "--pred", str(HIPPO / "pred"), "--ref", str(HIPPO / "labels"), "--images",
               str(HIPPO / "images"), "--out", str(out), "--no-progress", "--label-names", "1=anterior,2=posterior"])
    assert rc == 0
    return out


def test_pick_cases_and_error_point_by_hand():
    rows = [{"case": c, "label": 1, "status": "ok", "dice": d} for c, d in (("a", 0.9), ("b", 0.2), ("c", 0.5))]
    rows.append({"case": "d", "label": 1, "status": "error:missing_pred", "dice": 0.0})
    assert pick_cases(rows, 1) == [("worst", "b"), ("median", "c"), ("best", "a")]
    ref = np.zeros((6, 8, 8), bool)
    ref[1:4, 1:4, 1:4] = True
    pred = ref.copy()
    pred[1:2, 1:2, 1:2] = False      # 1 missed voxel
    pred[2:5, 5:7, 5:7] = True       # 12 false-positive voxels: the largest error
    z, y, x = largest_error_point(ref, pred)
    assert 2 <= z <= 4 and 5 <= y <= 6 and 5 <= x <= 6


def test_report_links_pages_and_offline(report):
    html = (report / "report.html").read_text()
    links = sorted(set(re.findall(r"href='([^']+)'", html)))
    assert links == [f"cases/hippocampus_00{i}.html" for i in (1, 3, 4, 6)]
    for link in links:
        page = (report / link).read_text()
        assert "data:image/png;base64," in page and "../report.html" in page
    for label in ("1", "2"):
        for kind in ("worst", "median", "best"):
            assert f"Label {label}: {kind}" in html
    # nothing fetched from elsewhere: no http(s) URL in any src / href, no external script
    for text in [html] + [(report / link).read_text() for link in links]:
        assert not re.search(r"(src|href)=['\"]?https?:", text) and "<script src" not in text
    assert "class='sortable'" in html and "addEventListener('click'" in html


def _screenshot(url: str, png: Path) -> None:
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1400", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=180)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_in_headless_browser(report, tmp_path):
    from PIL import Image

    for page, shot in ((report / "report.html", tmp_path / "report.png"),
                       (report / "cases" / "hippocampus_001.html", tmp_path / "case.png")):
        _screenshot(page.resolve().as_uri(), shot)
        px = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert px.shape[0] >= 1000 and px.std() > 20  # not blank: text, tables, grey images
        assert (px < 128).mean() > 0.02
    # the links resolve in the browser: the DOM of the report holds them, each page loads with its title
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (report / "report.html").resolve().as_uri()], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    hrefs = sorted(set(re.findall(r'href="(cases/[^"]+)"', dom)))
    assert len(hrefs) == 4
    for h in hrefs:
        page_dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                   (report / h).resolve().as_uri()], capture_output=True, text=True, timeout=180,
                                  check=True).stdout
        assert f"Case {Path(h).stem}" in page_dom and "<img" in page_dom
