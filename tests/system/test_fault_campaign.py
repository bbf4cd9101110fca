"""Fault campaign: hundreds of damaged variants of real files (made at test time in tests/system/faults/).

(a) every variant read on its own ends in a MedsegError whose code is one the variant allows and
whose message names the file: no crash (other exception), no silent success;
(b) ``medseg evaluate`` over a folder mixing every variant (as predictions) with the good sample
cases finishes, gives each bad case ``error:<code>`` rows, and the good cases' CSV rows are
byte-identical to a clean run of the good cases alone.
"""

from __future__ import annotations

import pytest

from tests.paths import SHARED
from tests.system.faults.campaign import (
    GOOD_CASES,
    SAMPLES,
    build_batch,
    csv_rows_by_case,
    evaluate_cli,
    read_all,
    sources,
)
from tests.system.faults.generate import make_corpus

DICOM = SHARED / "dicom" / "udacity_study3_HCropVolume"


def _sources(label_only: bool = False):
    s = sources(dicom=False, label_only=label_only)
    s.dicom = DICOM if DICOM.is_dir() else None
    return s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), _sources())


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 200
    families = {c.family for c in corpus}
    assert {"truncation", "gzip", "magic", "header", "voxels", "grid"} <= families
    if DICOM.is_dir():
        assert {"dicom_missing", "dicom_duplicate", "dicom_mixed", "dicom_orientation", "dicom_truncated",
                "dicom_spacing"} <= families
    assert len({c.path for c in corpus}) == len(corpus)


def test_corpus_is_deterministic(corpus, tmp_path):
    again = make_corpus(tmp_path, _sources())
    assert [c.path.name for c in again] == [c.path.name for c in corpus]
    for a, b in zip(again[:60], corpus[:60]):
        assert a.path.read_bytes() == b.path.read_bytes()


def test_every_variant_gives_a_clear_error(corpus):
    res = read_all(corpus)
    assert res.n == len(corpus)
    assert res.crashes == []
    assert res.silent == []
    assert res.wrong_code == []
    assert res.unnamed == []


def test_batch_reports_bad_cases_and_keeps_good_ones_exact(tmp_path, capsys):
    cases = make_corpus(tmp_path / "corpus", _sources(label_only=True))
    pred, ref, expected = build_batch(cases, tmp_path / "batch")
    assert evaluate_cli(pred, ref, tmp_path / "out", "--workers", "2") == 1  # bad cases fail: exit 1
    rows = csv_rows_by_case(tmp_path / "out" / "metrics.csv")
    assert set(rows) == set(expected) | set(GOOD_CASES)
    for cid, allowed in expected.items():
        statuses = {r.split(",")[7] for r in rows[cid]}
        assert len(statuses) == 1, cid
        status = statuses.pop()
        assert status.startswith("error:") and status[len("error:"):] in allowed, (cid, status, allowed)
    assert evaluate_cli(SAMPLES / "pred", SAMPLES / "labels", tmp_path / "clean") == 0
    clean = csv_rows_by_case(tmp_path / "clean" / "metrics.csv")
    for cid in GOOD_CASES:
        assert rows[cid] == clean[cid]
        assert not any(r.split(",")[7].startswith("error") for r in rows[cid])
    out = capsys.readouterr().out
    assert f"{len(expected)} failed" in out
