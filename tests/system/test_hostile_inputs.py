"""Hostile inputs (issue 13): decompression bombs, lying headers, FIFOs, YAML alias bombs and deep
nesting, detached headers pointing elsewhere, slide images claiming billions of pixels, free-text
DICOM fields. Each attack is generated on the fly (small on disk) and must end in a clear
``MedsegError`` with the file named, quickly, without the memory the attack asks for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from medseg.errors import ConfigError, InputError
from medseg.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, check_size, gunzip_capped, limits, override, parse_size
from tests.system.faults import bombs

REPO = Path(__file__).resolve().parents[2]


def _code(fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
    except (InputError, ConfigError) as exc:
        return exc.code
    raise AssertionError("no error raised")


# ------------------------------------------------------------------------------------------- caps
def test_limits_defaults_and_environment(monkeypatch):
    assert limits().max_bytes == DEFAULT_MAX_BYTES == 2 * 1024 ** 3
    assert limits().max_voxels == DEFAULT_MAX_VOXELS == 2 ** 29
    monkeypatch.setenv("MEDSEG_MAX_BYTES", "800M")
    monkeypatch.setenv("MEDSEG_MAX_VOXELS", "1000")
    assert limits().max_bytes == 800 * 1024 ** 2 and limits().max_voxels == 1000
    assert parse_size("1.5K") == 1536 and parse_size("3") == 3 and parse_size("2GiB") == 2 * 1024 ** 3
    monkeypatch.setenv("MEDSEG_MAX_BYTES", "lots")
    assert _code(limits) == "bad_limit"


def test_check_size_boundaries():
    with override(max_bytes=1000, max_voxels=100):
        check_size(voxels=100, nbytes=1000)          # exactly at the caps: allowed
        assert _code(check_size, voxels=101, nbytes=10) == "too_large"
        assert _code(check_size, voxels=1, nbytes=1001) == "too_large"


def test_gunzip_capped_stops_at_the_cap_without_inflating_the_rest():
    import gzip

    bomb = gzip.compress(bytes(64 << 20), 9)          # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as ei:
            gunzip_capped(bomb, cap=4 << 20, path="x.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.code == "too_large" and "x.gz" in str(ei.value)
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a 4 MiB cap"
    data = os.urandom(100_000) + bytes(1 << 20)
    assert gunzip_capped(gzip.compress(data)) == data            # round trip under the cap
    assert gunzip_capped(gzip.compress(b"a") + gzip.compress(b"b")) == b"ab"   # multi-member, as gzip


# ------------------------------------------------------------------------------------------- NIfTI
def test_nifti_header_claiming_16_gib_is_refused_before_inflating(tmp_path):
    from medseg.io import read_volume

    p = bombs.nifti_bomb(tmp_path / "bomb.nii.gz", claimed=(2048, 2048, 1024), inflated=16 << 20)
    assert p.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as ei:
            read_volume(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.code == "too_large" and str(p) in str(ei.value) and "4,294,967,296 voxels" in str(ei.value)
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB: the stream was inflated"


def test_nifti_stream_longer_than_its_header_is_cut_at_the_described_size(tmp_path):
    """Header says 16^3 float32 (16 KiB); the stream inflates to 64 MiB: stopped ~1 MiB past the header."""
    from medseg.io import read_volume

    p = bombs.nifti_bomb(tmp_path / "liar.nii.gz", claimed=(16, 16, 16), inflated=64 << 20)
    tracemalloc.start()
    try:
        code = _code(read_volume, p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == "bad_header"
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_nifti_under_a_lowered_cap_is_too_large_and_a_raised_cap_reads_it(tmp_path):
    from medseg.io import read_volume

    p = bombs.nifti_bomb(tmp_path / "ok.nii.gz", claimed=(64, 64, 64), inflated=64 * 64 * 64 * 4)
    with override(max_bytes=512 * 1024):
        assert _code(read_volume, p) == "too_large"
    with override(max_voxels=64 ** 3 - 1):
        assert _code(read_volume, p) == "too_large"
    assert read_volume(p).array.shape == (64, 64, 64)


def test_bomb_in_a_subprocess_with_a_hard_memory_limit(tmp_path):
    """With RLIMIT_AS at 1.5 GiB a reader that inflated the 16 GiB bomb would die of MemoryError;
    the cap refuses it from the header with code too_large."""
    p = bombs.nifti_bomb(tmp_path / "b.nii.gz", claimed=(4096, 4096, 256), inflated=32 << 20)
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))\n"
            "from medseg.io import read_volume\nfrom medseg.errors import InputError\n"
            f"try:\n    read_volume({str(p)!r})\nexcept InputError as e:\n    print('CODE', e.code)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), MEDSEG_MAX_BYTES="1G")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert "CODE too_large" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------------------- NRRD / MetaImage
def test_nrrd_header_claiming_too_much_is_refused(tmp_path):
    from medseg.io import read_volume

    p = bombs.nrrd_bomb(tmp_path / "b.nrrd", claimed=(4096, 4096, 4096), inflated=1 << 20)
    err = pytest.raises(InputError, read_volume, p).value
    assert err.code == "too_large" and str(p) in str(err)


def test_nrrd_and_mha_streams_longer_than_the_header_are_cut(tmp_path):
    from medseg.io import read_volume

    nrrd = bombs.nrrd_bomb(tmp_path / "s.nrrd", claimed=(8, 8, 8), inflated=32 << 20)
    mha = bombs.mha_zlib_bomb(tmp_path / "s.mha", claimed=(8, 8, 8), inflated=32 << 20)
    for p in (nrrd, mha):
        tracemalloc.start()
        try:
            code = _code(read_volume, p)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code in ("bad_header", "truncated", "corrupt"), (p, code)
        assert peak < 12 << 20, f"{p.name}: peak {peak / 2**20:.1f} MiB"


def test_detached_data_files_must_lie_beside_their_header(tmp_path):
    from medseg.io import read_volume

    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(64)))
    case = tmp_path / "cases"
    case.mkdir()
    (case / "ok.raw").write_bytes(bytes(64))
    attacks = [bombs.mhd_pointing_to(case / "a.mhd", "/etc/passwd"),
               bombs.mhd_pointing_to(case / "b.mhd", "../secret.raw"),
               bombs.mhd_pointing_to(case / "c.mhd", str(secret)),
               bombs.nhdr_pointing_to(case / "d.nhdr", "../secret.raw"),
               bombs.nhdr_pointing_to(case / "e.nhdr", "/etc/passwd")]
    (case / "link.raw").symlink_to(secret)
    attacks.append(bombs.mhd_pointing_to(case / "f.mhd", "link.raw"))   # a symlink beside it that leads out
    for p in attacks:
        err = pytest.raises(InputError, read_volume, p).value
        assert err.code == "unsafe_path", (p.name, err)
        assert str(p) in str(err)
    ok = bombs.mhd_pointing_to(case / "ok.mhd", "ok.raw")
    assert read_volume(ok).array.shape == (4, 4, 4)
    ok2 = bombs.nhdr_pointing_to(case / "ok2.nhdr", "ok.raw")
    assert read_volume(ok2).array.shape == (4, 4, 4)


# -------------------------------------------------------------------------------- FIFOs and friends
def test_fifo_named_like_a_volume_fails_at_once(tmp_path):
    from medseg.io import list_cases, read_volume

    fifo = tmp_path / "x.nii.gz"
    os.mkfifo(fifo)
    for name in ("y.nrrd", "z.mha"):
        os.mkfifo(tmp_path / name)
    done: dict[str, str] = {}

    def attempt():
        for p in sorted(tmp_path.iterdir()):
            done[p.name] = _code(read_volume, p)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test process can end, then fail
        for p in tmp_path.iterdir():
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail("reading a FIFO blocked")
    assert done == {"x.nii.gz": "not_a_file", "y.nrrd": "not_a_file", "z.mha": "not_a_file"}
    assert len(list_cases(tmp_path)) == 3   # listed as cases, so each is reported as a failed case


def test_fifo_in_info_cli_is_a_clear_error(tmp_path, capsys):
    fifo = tmp_path / "x.nii.gz"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "medseg", "info", str(fifo)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "FIFO" in r.stderr + r.stdout


def test_hidden_volume_files_are_reported_not_skipped_silently(tmp_path, caplog):
    from medseg.io import list_cases

    for n in ("a.nii.gz", ".hidden_case.nii.gz", ".DS_Store"):
        (tmp_path / n).write_bytes(b"x")
    with caplog.at_level("WARNING"):
        assert [p.name for p in list_cases(tmp_path)] == ["a.nii.gz"]
    assert ".hidden_case.nii.gz" in caplog.text and "1 hidden volume file" in caplog.text
    assert ".DS_Store" not in caplog.text


# -------------------------------------------------------------------------------------------- YAML
def test_yaml_alias_bomb_is_refused_quickly_in_every_place_yaml_enters(tmp_path):
    import time

    from medseg.config import apply_overrides, load_yaml, loads

    text = bombs.yaml_alias_bomb()
    t0 = time.perf_counter()
    assert _code(loads, text) == "yaml_too_complex"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert _code(load_yaml, cfg) == "yaml_too_complex"
    flow = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 9) + "]"
    assert loads(flow)[0] == ["x"] * 10       # a few aliases are fine
    bomb_value = "{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " \
                 "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], " \
                 "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]}"
    assert _code(apply_overrides, {}, [f"data.labels={bomb_value}"]) == "yaml_too_complex"
    assert time.perf_counter() - t0 < 5


def test_yaml_recursive_alias_and_deep_nesting_are_config_errors(tmp_path):
    from medseg.config import apply_overrides, loads

    assert _code(loads, "a: &x [1, *x]") == "yaml_too_complex"
    assert _code(loads, bombs.yaml_deep()) == "yaml_too_complex"
    assert _code(loads, "{a: " * 20_000 + "1" + "}" * 20_000) == "yaml_too_complex"
    assert _code(apply_overrides, {}, ["x=" + bombs.yaml_deep()]) == "yaml_too_complex"
    deep_ok = "[" * 60 + "]" * 60
    assert loads(deep_ok) is not None


def test_yaml_bomb_in_bundle_yaml_is_a_clean_bundle_error(tmp_path):
    from medseg.bundle import read_meta

    (tmp_path / "bundle.yaml").write_text("format: medseg-bundle/1\n" + bombs.yaml_alias_bomb())
    err = pytest.raises(InputError, read_meta, tmp_path).value
    assert err.code == "yaml_too_complex"


def test_set_amp_off_is_accepted():
    from medseg.config import apply_overrides
    from medseg.training.config import resolve_config

    base = {"data": {"root": "x"}, "model": {"name": "unet"}, "output": {"dir": "y"}}
    for word in ("off", "false", "no", "Off"):
        cfg = resolve_config(apply_overrides(base, [f"training.amp={word}"]))
        assert cfg["training"]["amp"] == "off", word
    with pytest.raises(ConfigError):
        resolve_config(apply_overrides(base, ["training.amp=on"]))   # on is not a mode: true stays refused


# ---------------------------------------------------------------------------------------- slides
def test_png_claiming_900_megapixels_is_refused_from_its_header(tmp_path):
    from medseg.io.wsi import open_slide

    p = bombs.png_bomb(tmp_path / "big.png", width=30000, height=30000)
    assert p.stat().st_size < 3_000_000
    tracemalloc.start()
    try:
        err = pytest.raises(InputError, open_slide, p, mpp=0.5).value
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "too_large" and str(p) in str(err)
    assert peak < 32 << 20


def test_pil_bomb_guard_is_on_and_tied_to_the_cap(tmp_path):
    from PIL import Image

    from medseg.io.wsi import open_slide

    p = bombs.png_bomb(tmp_path / "m.png", width=2000, height=1000)
    with override(max_voxels=1_000_000):
        assert _code(open_slide, p, mpp=0.5) == "too_large"
        assert Image.MAX_IMAGE_PIXELS == 1_000_000
    s = open_slide(p, mpp=0.5)
    assert s.dimensions == (2000, 1000)
    assert Image.MAX_IMAGE_PIXELS is not None


# ------------------------------------------------------------------------------------- DICOM text
def test_dicom_series_description_is_never_read_or_printed(tmp_path, capsys, caplog):
    import pydicom

    from medseg.cli.main import main
    from tests.paths import shared_path

    src = shared_path("dicom", "udacity_study3_HCropVolume")
    dst = tmp_path / "series"
    dst.mkdir()
    secret = "DOE^JANE 1970-01-01"
    for i, f in enumerate(sorted(src.iterdir())):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = secret
        ds.StudyDescription = secret
        ds.save_as(dst / f"{i:03d}.dcm")
    with caplog.at_level("DEBUG"):
        assert main(["info", str(dst)]) == 0
        assert main(["info", "--json", str(dst)]) == 0
        from medseg.io import read_volume

        vol = read_volume(dst)
    out = capsys.readouterr()
    assert "DOE" not in out.out + out.err + caplog.text
    assert "DOE" not in repr(vol.meta)


# --------------------------------------------------------------------------------------- torch.load
def test_torch_load_refusal_keeps_torchs_explanation(tmp_path):
    import torch

    from medseg.errors import unpickle_reason

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    try:
        torch.load(p, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = unpickle_reason(exc)
    assert "getcwd" in reason and "UnpicklingError" in reason
    assert "weights_only` set to `False`" not in reason and "Re-running" not in reason



def test_png_mask_bomb_and_fifo_config_are_refused(tmp_path):
    from medseg.config import load_yaml
    from medseg.io.mask2d import read_mask2d

    png = bombs.png_bomb(tmp_path / "mask.png", width=30000, height=30000)
    err = pytest.raises(InputError, read_mask2d, png, pixel_spacing_mm=(1.0, 1.0)).value
    assert err.code == "too_large" and str(png) in str(err)
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    done: dict[str, str] = {}

    def attempt():
        done["code"] = _code(load_yaml, fifo)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO config blocked")
    assert done["code"] == "not_a_file"
