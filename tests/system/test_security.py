"""Security: no pickle execution, safe YAML, hostile case names, no patient identifiers in outputs."""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import pydicom
import pytest

from medseg import config as cfgmod
from medseg.cli.main import main
from medseg.errors import ConfigError, MedsegError
from medseg.fsutil import case_id, safe_join, sanitize_name
from tests.paths import REPO, SAMPLES, shared_path

MEDSEG = REPO / "medseg"


# ----------------------------------------------------------------------------- code scan
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, node


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_no_unsafe_deserialisation_or_eval_in_medseg():
    problems = []
    for f in sorted(MEDSEG.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for owner, name, node in _calls(tree):
            where = f"{f.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and name == "load" and _kw(node, "weights_only") is not True:
                problems.append(f"{where} torch.load without weights_only=True")
            if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
                problems.append(f"{where} {owner}.{name}")
            if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load", "full_load_all"):
                problems.append(f"{where} yaml.{name} (use medseg.config)")
            if owner in ("np", "numpy") and name == "load" and _kw(node, "allow_pickle") not in (None, False):
                problems.append(f"{where} np.load(allow_pickle=...)")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where} {name}()")
            if name in ("run", "Popen", "call", "check_call", "check_output", "system") and \
                    _kw(node, "shell") not in (None, False):
                problems.append(f"{where} subprocess with shell=True")
    assert problems == []


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_weights_only_refuses_code(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, p)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(p, weights_only=True)
    assert not marker.exists()


def test_bundle_loader_refuses_a_pickle(tmp_path):
    if importlib.util.find_spec("medseg.bundle") is None:
        pytest.skip("medseg.bundle (checkpoint loading) is not on this branch yet")
    from medseg import bundle

    marker = tmp_path / "pwned"
    p = tmp_path / "model.safetensors"
    p.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(MedsegError):
        bundle.load_weights(p)
    assert not marker.exists()


# ----------------------------------------------------------------------------- YAML
def test_yaml_duplicate_keys_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nparams:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError) as ei:
        cfgmod.load_yaml(p)
    assert ei.value.code == "duplicate_key" and "'lr'" in str(ei.value) and str(p) in str(ei.value)


@pytest.mark.parametrize("doc", [
    "x: !!python/object/apply:os.system ['touch {m}']",
    "x: !!python/object/new:subprocess.Popen [['touch', '{m}']]",
    "x: !!python/name:os.system",
    "!!python/object/apply:os.system ['touch {m}']",
    "x: !!binary aGVsbG8=\ny: !!python/tuple [1, 2]",
])
def test_yaml_python_tags_refused(tmp_path, doc):
    marker = tmp_path / "pwned"
    p = tmp_path / "c.yaml"
    p.write_text(doc.format(m=marker))
    with pytest.raises(ConfigError):
        cfgmod.load_yaml(p)
    assert not marker.exists()


def test_unknown_config_keys_are_named():
    from medseg.pipeline import resolve_config

    with pytest.raises(ConfigError) as ei:
        resolve_config({"name": "x", "output": "o", "stages": [], "outptu": "typo"})
    assert "outptu" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        resolve_config({"name": "x", "output": "o", "stages": [{"stage": "evaluate", "parms": {}}]})
    assert "parms" in str(ei.value) and "stages[0]" in str(ei.value)


def test_config_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    out = cfgmod.apply_overrides({}, [f"a={code}", "b=1+1"])
    assert out == {"a": code, "b": "1+1"}
    with pytest.raises(ConfigError):
        cfgmod.apply_overrides({}, ["c=!!python/object/apply:os.system ['true']"])
    assert not marker.exists()


# ----------------------------------------------------------------------------- hostile names
HOSTILE = [
    "../../etc/passwd", "..", ".", "", "/etc/shadow", "/", "a/../../b", "..\\..\\windows\\system32",
    "case\x00.nii.gz", "-rf", "--help", "~root", "$(touch pwned)", "`id`", "a;rm -rf ~",
    "\u202egpj.exe", "..\u2215..\u2215etc", "\uff0e\uff0e/\uff0e\uff0e/x", "x" * 5000, "<script>alert(1)</script>",
    "CON", " leading space", "\n\r\t", "=HYPERLINK(\"http://x\")",
]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_stay_inside_the_output_folder(tmp_path, name):
    s = sanitize_name(name)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s), s
    assert s not in (".", "..") and len(s) <= 120
    root = tmp_path / "out"
    target = safe_join(root, s)
    assert target.parent == root.resolve()
    try:  # the raw name: either inside the folder or refused
        raw = safe_join(root, name)
    except MedsegError as exc:
        assert exc.code == "unsafe_path"
    else:
        assert raw == root.resolve() or root.resolve() in raw.parents


FILE_NAMES = ["-rf", "$(touch pwned)", "<script>alert(1)<", "a;rm -rf ~", "\u202egpj", "a..b", "~root",
              "=HYPERLINK(1)", "x" * 200, "sp ace", "back\\slash", "caf\u00e9"]


def test_evaluate_with_hostile_file_names(tmp_path, monkeypatch):
    src_p = SAMPLES / "hippocampus" / "pred" / "hippocampus_001.nii.gz"
    src_r = SAMPLES / "hippocampus" / "labels" / "hippocampus_001.nii.gz"
    work = tmp_path / "work"
    for sub, src in (("pred", src_p), ("ref", src_r)):
        (work / sub).mkdir(parents=True)
        for n in FILE_NAMES:
            shutil.copy(src, work / sub / f"{n}.nii.gz")
    monkeypatch.chdir(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    assert main(["evaluate", "--pred", str(work / "pred"), "--ref", str(work / "ref"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == tmp_path / "out" or (tmp_path / "out") in p.parents for p in new)
    assert not (tmp_path / "pwned").exists()
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html and "\u202e" not in html
    rows = (tmp_path / "out" / "metrics.csv").read_text(encoding="utf-8")
    # the case names predict would give these files (issue 13: one case-name function for every verb)
    from medseg.fsutil import unique_names

    names = unique_names([case_id(f"{n}.nii.gz") for n in FILE_NAMES])
    assert len(set(names)) == len(FILE_NAMES) and all(n in rows for n in names)
    assert "\u202e" not in rows


# ----------------------------------------------------------------------------- patient identifiers
MARK_NAME, MARK_ID, MARK_INST = "QQZPHINAME", "QQZPHIID4711", "QQZPHIHOSPITAL"


def _identified_series(src: Path, dst: Path, *, drop: str | None = None) -> Path:
    shutil.copytree(src, dst)
    for f in sorted(dst.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName = f"{MARK_NAME}^Jane"
        ds.PatientID = MARK_ID
        ds.PatientBirthDate = "19010203"
        ds.InstitutionName = MARK_INST
        ds.ReferringPhysicianName = f"{MARK_NAME}^Dr"
        ds.save_as(f)
    if drop:
        (dst / drop).unlink()
    return dst


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [m for m in (MARK_NAME, MARK_ID, MARK_INST, "19010203") if m.lower() in low]


def test_patient_identifiers_appear_nowhere(tmp_path, capsys, caplog):
    src = shared_path("dicom", "udacity_study3_HCropVolume")
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    _identified_series(src, pred / "case_a")
    _identified_series(src, ref / "case_a")
    _identified_series(src, pred / "case_b", drop="20.dcm")  # a broken series: error paths too
    _identified_series(src, ref / "case_b")
    caplog.set_level(logging.DEBUG)
    from medseg.io import read_volume

    vol = read_volume(pred / "case_a")
    assert _leaks(repr(vol.meta)) == []
    assert case_id(pred / "case_a") == "case_a"  # the id comes from the folder name, not the header
    assert main(["-vv", "info", str(pred / "case_a")]) == 0
    assert main(["info", "--json", str(pred / "case_a")]) == 0
    assert main(["info", str(pred / "case_b")]) == 1
    # case_b's broken series fails: evaluate writes everything and exits 1
    assert main(["-vv", "evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "out"),
                 "--labels", "1", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "case_b: error:missing_slice" in captured.out
    assert _leaks(captured.out + captured.err) == []
    assert _leaks(caplog.text) == []
    outputs = list((tmp_path / "out").iterdir())
    assert {p.name for p in outputs} == {"metrics.csv", "summary.json", "report.html"}
    for p in outputs:
        assert _leaks(p.read_bytes().decode("utf-8", "replace")) == [], p.name
        assert _leaks(p.name) == []


def test_only_the_dicom_seg_carries_patient_identifiers(tmp_path, capsys, caplog):
    """medseg predict with every output on an identified series: the DICOM SEG carries the patient and
    study (the standard needs them); logs, file names, NIfTI, seg.nrrd, statistics, preview, manifest
    and timings never do - neither for the good case nor for a broken series."""
    import gzip

    from tests.inference.helpers import make_bundle

    src = shared_path("dicom", "udacity_study3_HCropVolume")
    cohort = tmp_path / "in"
    cohort.mkdir()
    _identified_series(src, cohort / "case_a")
    _identified_series(src, cohort / "case_b", drop="20.dcm")
    bundle = make_bundle(tmp_path / "hippocampus_unet", patch=(16, 16, 16),
                         extra={"labels": {0: "background", 1: "anterior", 2: "posterior"}})
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    assert main(["-vv", "predict", "--model", str(bundle), "--input", str(cohort), "--output", str(out),
                 "--device", "cpu", "--no-progress", "--output-format", "dicom-seg,seg-nrrd", "--statistics",
                 "--preview"]) == 1
    captured = capsys.readouterr()
    assert "case_b" in captured.out and "missing_slice" in captured.out
    assert _leaks(captured.out + captured.err) == [] and _leaks(caplog.text) == []
    names = {p.name for p in out.iterdir()}
    assert {"case_a.nii.gz", "case_a.seg.nrrd", "case_a_statistics.json", "case_a_preview.png", "case_a_seg.dcm",
            "statistics.csv",
            "manifest.json", "timings.csv"} <= names
    for p in out.iterdir():
        assert _leaks(p.name) == []
        raw = p.read_bytes()
        if p.name.endswith(".gz"):
            raw = gzip.decompress(raw)       # the NIfTI header (descrip, aux_file, intent name)
        text = raw.decode("latin-1")
        if p.name == "case_a_seg.dcm":
            assert MARK_NAME in text and MARK_ID in text       # the SEG is attached to the patient's study
            seg = pydicom.dcmread(p)
            assert str(seg.PatientID) == MARK_ID
        else:
            assert _leaks(text) == [], p.name
