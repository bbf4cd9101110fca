"""Bundles that are not what they seem (issue 13): weights linked from outside, unknown keys,
implausible sizes, a folder shadowing a shipped bundle's name; and what ``predict`` records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from medseg.bundle import bundle_sha256, load_models, read_meta, write_meta
from medseg.errors import InputError
from medseg.inference.bundles import PACKAGE_BUNDLES, resolve_bundle
from tests.inference.helpers import REPO_ROOT as REPO
from tests.inference.helpers import blob_cohort, make_bundle
from tests.system.faults import bombs


def _err(fn, *a, **kw) -> InputError:
    return pytest.raises(InputError, fn, *a, **kw).value


def _with(bundle, **changes):
    meta = read_meta(bundle)
    meta.update(changes)
    write_meta(bundle, meta)
    return bundle


def test_weights_symlinked_from_outside_are_refused(tmp_path):
    real = make_bundle(tmp_path / "real")
    fake = make_bundle(tmp_path / "fake", seed=1)
    (fake / "model.safetensors").unlink()
    (fake / "model.safetensors").symlink_to(real / "model.safetensors")
    err = _err(load_models, fake)
    assert err.code == "unsafe_path" and "symbolic link" in str(err)
    # a linked fold folder is refused too
    ens = make_bundle(tmp_path / "ens", seed=2)
    (ens / "fold_0").symlink_to(real, target_is_directory=True)
    _with(ens, folds=[0])
    assert _err(load_models, ens).code == "unsafe_path"


def test_unknown_bundle_keys_are_refused_not_ignored(tmp_path):
    b = make_bundle(tmp_path / "b")
    text = (b / "bundle.yaml").read_text() + "weights: ../../x.safetensors\n"
    (b / "bundle.yaml").write_text(text)
    err = _err(read_meta, b)
    assert err.code == "bad_bundle" and "weights" in str(err)


@pytest.mark.parametrize("change, word", [
    ({"patch_size": [4096, 4096, 4096]}, "patch_size"),
    ({"spacing_mm": [0.001, 0.001, 0.001]}, "spacing_mm"),
    ({"spacing_mm": [1.0, float("nan"), 1.0]}, "spacing_mm"),
    ({"patch_size": [16, -16, 16]}, "patch_size"),
    ({"channels": 100000}, "channels"),
])
def test_implausible_sizes_are_refused_at_load(tmp_path, change, word):
    b = _with(make_bundle(tmp_path / "b"), **change)
    err = _err(read_meta, b)
    assert err.code == "implausible" and word in str(err)


def test_plan_sizes_are_checked_too(tmp_path):
    b = make_bundle(tmp_path / "b")
    meta = read_meta(b)
    meta["plan"]["spacing_mm"] = [0.001, 1.0, 1.0]
    write_meta(b, meta)
    assert _err(read_meta, b).code == "implausible"


def test_huge_model_kwargs_are_refused_without_allocating(tmp_path):
    b = make_bundle(tmp_path / "b")
    meta = read_meta(b)
    meta["model"]["kwargs"]["features"] = [32768, 32768]
    write_meta(b, meta)
    err = _err(load_models, b)
    assert err.code == "implausible" and "parameters" in str(err)
    # in a fresh process: the peak resident memory stays far below the 5.5 GB the kwargs ask for. VmHWM of
    # the process's own memory map, not ru_maxrss: Linux carries the parent's high-water mark across
    # vfork + exec, so a large pytest worker made this fail in CI
    code = ("from medseg.bundle import load_models\nfrom medseg.errors import InputError\n"
            f"try:\n    load_models({str(b)!r})\nexcept InputError as e:\n    print('CODE', e.code)\n"
            "print('RSS_MB', int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "CODE implausible" in r.stdout, r.stderr[-2000:]
    rss = int(r.stdout.split("RSS_MB")[1])
    assert rss < 1500, f"peak RSS {rss} MB"


def test_yaml_bomb_in_bundle_yaml_keeps_its_code(tmp_path):
    (tmp_path / "bundle.yaml").write_text("format: medseg-bundle/1\n" + bombs.yaml_alias_bomb())
    assert _err(read_meta, tmp_path).code == "yaml_too_complex"


def test_a_folder_named_like_a_shipped_bundle_is_ambiguous(tmp_path, monkeypatch):
    shipped = sorted(p.name for p in PACKAGE_BUNDLES.iterdir() if (p / "bundle.yaml").is_file())
    if not shipped:
        pytest.skip("no shipped bundle")
    name = shipped[0]
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle(name) == PACKAGE_BUNDLES / name
    make_bundle(tmp_path / name)
    err = _err(resolve_bundle, name)
    assert err.code == "ambiguous_model" and str(tmp_path / name) in str(err)
    assert resolve_bundle(f"./{name}").resolve() == (tmp_path / name).resolve()   # as a path: fine
    # the same through MEDSEG_BUNDLES
    site = tmp_path / "site"
    make_bundle(site / name)
    monkeypatch.chdir(site.parent.parent)
    monkeypatch.setenv("MEDSEG_BUNDLES", str(site))
    assert _err(resolve_bundle, name).code == "ambiguous_model"
    make_bundle(site / "site_only")
    assert resolve_bundle("site_only") == site / "site_only"       # a new name on the path is fine


def test_predict_prints_and_records_the_bundle_path_and_sha256(tmp_path, capsys):
    from medseg.cli.main import main

    b = make_bundle(tmp_path / "b")
    cases = blob_cohort(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(b), "--input", str(cases), "--output", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    digest = bundle_sha256(b, [b / "model.safetensors"])
    assert man["bundle"] == {"path": str(b.absolute()), "sha256": digest}
    assert str(b.absolute()) in printed and digest in printed
    # a changed bundle.yaml changes the digest
    shutil.copytree(b, tmp_path / "b2")
    (tmp_path / "b2" / "bundle.yaml").write_text((b / "bundle.yaml").read_text() + "# comment\n")
    assert bundle_sha256(tmp_path / "b2", [tmp_path / "b2" / "model.safetensors"]) != digest
