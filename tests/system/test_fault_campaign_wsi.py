"""Damaged real slides (SVS, NDPI) in one ``wsi tile`` + ``wsi features`` batch with the clean slides.

Every variant must end in a per-slide ``error:<code>`` row with a slide-reader code, or give tiles
and features identical to its clean slide's (the damage lies in bytes medseg never reads); the
batch never crashes. Known limit (docs/reliability.md): random bytes written into the JPEG data of
a tile can still decode without any error (JPEG carries no checksum), so a garbage tile from a
``random`` variant cannot be detected; such variants are the only ones allowed to pass with
different outputs, and never a truncation, wrong magic, broken header or zeroed tile data.
"""

from __future__ import annotations

import pytest

from tests.paths import shared_path
from tests.system.faults.wsi_campaign import SLIDES, run_slide_batch
from tests.system.faults.wsi_faults import SLIDE_CODES, make_slide_corpus

pytestmark = [pytest.mark.slow, pytest.mark.shared]  # ~30-50 s on 2 cores: tiles + features of ~25 slides

PICK = ("_trunc_f0.01.", "_trunc_f0.5.", "_trunc_f0.999.", "_trunc_16B.", "_magic_zeros.", "_magic_bigendian.",
        "_ifd_past_end.", "_ifd_zero.", "_p1_zeros_0.2.", "_p1_random_0.6.")
SVS_TILES = tuple(f"_p0_zeros_{f}." for f in (0.2, 0.4, 0.6, 0.8)) + ("_p0_random_0.2.", "_p0_random_0.6.")


def _select(name: str) -> bool:
    """All four families on both formats; the campaign script runs all 99 variants."""
    return any(k in name for k in PICK) or (name.startswith("CMU") and any(k in name for k in SVS_TILES))


def test_damaged_slides_give_per_slide_errors_never_a_crash(tmp_path):
    slides = [shared_path("wsi", s) for s in SLIDES[:2]]
    cases = make_slide_corpus(tmp_path / "corpus", slides, select=_select)
    assert len(cases) >= 25
    assert {c.family for c in cases} == {"slide_truncated", "slide_magic", "slide_header", "slide_tiles"}
    res = run_slide_batch(cases, slides, tmp_path / "run", tile_size=512)  # raises if the batch crashed
    assert res["wrong_code"] == []
    assert all(s.split(": ")[0].rsplit("_", 2)[-2] == "random" for s in res["silent"]), res["silent"]
    assert len(res["error"]) + len(res["unaffected"]) + len(res["silent"]) == len(cases)
    errors = {s.split(": ")[0]: s.split(": ")[1] for s in res["error"]}
    # every truncation, wrong magic and broken IFD pointer is refused at open
    for c in cases:
        if c.family != "slide_tiles":
            assert c.path.stem in errors, c.path.name
    # zeroed JPEG data in the full-resolution level of the SVS fails the slide (read_failed)
    assert all(errors.get(f"CMU_1_Small_Region_p0_zeros_{f}") == "error:read_failed" for f in (0.2, 0.4, 0.6, 0.8))
    assert {e.split(":")[1] for e in errors.values()} <= SLIDE_CODES


def test_tile_read_error_keeps_its_code_across_dataloader_workers(tmp_path):
    """A damaged pyramid level read by DataLoader worker processes (the CLI default, --workers 2) gives
    the same per-slide ``error:read_failed`` and message as reading in the main process."""
    import torch

    from medseg.wsi.features import EncoderSpec, extract_features_batch
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    slide = shared_path("wsi", SLIDES[1])
    cases = make_slide_corpus(tmp_path / "c", [slide], select=lambda n: "_p1_zeros_0.2." in n)
    assert [r["status"] for r in tile_slides([cases[0].path], tmp_path / "t", TilingParams(tile_size=512))] == ["ok"]
    spec = EncoderSpec(name="tile_resnet_tiny")
    rows = [extract_features_batch(tmp_path / "t", tmp_path / f"f{w}", spec, device=torch.device("cpu"), batch_size=8,
                                   workers=w)[0] for w in (0, 2)]
    assert rows[0]["status"] == rows[1]["status"] == "error:read_failed"
    assert rows[0]["error"] == rows[1]["error"] and rows[1]["error"].startswith("cannot read region")
    assert "Traceback" not in rows[1]["error"]
