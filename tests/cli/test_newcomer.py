"""A newcomer's run over every verb with bad arguments, as a new user would type them (``python -m medseg``
in a fresh process): an existing file as the output, an unknown flag, a typo in a config key, a missing
input, an empty folder, the wrong modality. Every one must end with no traceback, one error line naming
the problem and the documented exit code (README: 0 done, 1 some cases failed, 2 usage or config error).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples" / "hippocampus"


def _medseg(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "medseg", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("newcomer")
    (w / "afile").write_text("an existing file\n")
    (w / "empty").mkdir()
    (w / "bags.csv").write_text("1,1,0.5,0.2\n0,2,0.1,0.3\n")
    (w / "folder_out").mkdir()
    return w


def _cases(w: Path) -> list[tuple[str, list[str], int, str]]:
    """(what, argv, exit code, a piece of the one error line)."""
    afile, empty, cfg = str(w / "afile"), str(w / "empty"), str(REPO / "configs" / "demo.yaml")
    imgs, labs, pred = str(SAMPLES / "images"), str(SAMPLES / "labels"), str(SAMPLES / "pred")
    train_cfg = str(REPO / "configs" / "seg3d" / "hippocampus_unet.yaml")
    return [
        # an existing file given as the output folder: exit 2 before any data is read or a model built
        ("evaluate output file", ["evaluate", "--pred", pred, "--ref", labs, "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("predict output file", ["predict", "--model", "hippocampus_unet", "--input", imgs, "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("run output file", ["run", cfg, "--set", f"output={afile}"], 2, "is an existing file"),
        ("train output file", ["train", "--config", train_cfg, "--set", f"output.dir={afile}"], 2,
         "afile is an existing file; give a folder"),
        ("train --output file", ["train", "--config", train_cfg, "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("wsi tile output file", ["wsi", "tile", str(w / "bags.csv"), "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("wsi predict output file", ["wsi", "predict", "--model", str(w / "empty"), "--input", str(w / "bags.csv"),
                                     "--output", afile], 2, "afile is an existing file; give a folder"),
        ("mil cv output file", ["mil", "cv", "--data", str(w / "bags.csv"), "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("fingerprint output folder", ["fingerprint", "--images", imgs, "--output", str(w / "folder_out")], 2,
         "is a folder; give a file name"),
        ("plan output in a file", ["plan", "--dataset", empty, "--output", f"{afile}/plan.yaml"], 2,
         "afile is an existing file; give a folder"),
        ("export output exists", ["export", "--model", "hippocampus_unet", "--output", afile], 2, "already exists"),
        ("wsi evaluate output file", ["wsi", "evaluate", "--pred", str(w / "bags.csv"), "--labels",
                                      str(w / "bags.csv"), "--output", afile], 2,
         "afile is an existing file; give a folder"),
        ("wsi evaluate missing", ["wsi", "evaluate", "--pred", "nowhere.csv", "--labels", str(w / "bags.csv"),
                                  "--output", "o"], 2, "--pred nowhere.csv does not exist"),
        ("wsi features output file", ["wsi", "features", "--tiles", empty, "--output", afile], 2,
         "afile is an existing file; give a folder"),
        # unknown flags are named (with the closest known one), never taken as abbreviations
        ("evaluate unknown flag", ["evaluate", "--pred", pred, "--ref", labs, "--outdir", "x"], 2,
         "unknown option --outdir (did you mean --output?)"),
        ("predict prefix", ["predict", "--model", "m", "--input", imgs, "--outp", "x"], 2, "unknown option --outp"),
        ("info unknown flag", ["info", imgs, "--jsn"], 2, "unknown option --jsn (did you mean --json?)"),
        ("mil unknown flag", ["mil", "cv", "--data", "d", "--output", "o", "--fold", "3"], 2,
         "unknown option --fold (did you mean --folds?)"),
        ("wsi tile unknown flag", ["wsi", "tile", "s.svs", "--output", "o", "--tilesize", "3"], 2,
         "unknown option --tilesize (did you mean --tile-size?)"),
        ("train unknown flag", ["train", "--config", train_cfg, "--epochs", "3"], 2, "unknown option --epochs"),
        # a typo in a config key, found before any stage or training runs
        ("run config typo", ["run", cfg, "--set", f"output={w / 'r'}", "--set", "params.evaluate.nsd_tolerence_mm=2"],
         2, "unknown parameter 'nsd_tolerence_mm' (did you mean 'nsd_tolerance_mm'?)"),
        ("wsi train output file", ["wsi", "train", "--config", str(REPO / "configs" / "wsi" / "train_demo.yaml"),
                                   "--set", f"output={afile}"], 2, "is an existing file; give a folder"),
        ("wsi train config typo", ["wsi", "train", "--config", str(REPO / "configs" / "wsi" / "train_demo.yaml"),
                                   "--set", f"output={w / 'r'}", "--set", "params.wsi_tile.tile_sise=64"], 2,
         "unknown parameter 'tile_sise' (did you mean 'tile_size'?)"),
        ("train config typo", ["train", "--config", train_cfg, "--set", "training.epocs=3"], 2,
         "epocs (did you mean epochs?)"),
        ("mil config typo", ["mil", "cv", "--data", str(w / "bags.csv"), "--output", str(w / "m"), "--set",
                             "epoch=3"], 2, "epoch (did you mean epochs?)"),
        # missing inputs say which
        ("predict missing input", ["predict", "--model", "hippocampus_unet", "--input", "nowhere", "--output", "o"],
         2, "--input nowhere does not exist"),
        ("evaluate missing input", ["evaluate", "--pred", "nowhere", "--ref", labs, "--output", "o"], 2,
         "--pred nowhere does not exist"),
        ("train missing data", ["train", "--dataset", "nowhere"], 2, "--dataset nowhere does not exist"),
        ("train missing data.root", ["train", "--config", train_cfg, "--set", "data.root=nowhere"], 2,
         "data.root nowhere does not exist"),
        ("plan missing data", ["plan", "--dataset", "nowhere"], 2, "--dataset nowhere does not exist"),
        ("fingerprint missing", ["fingerprint", "--images", "nowhere", "--output", "p.yaml"], 2,
         "--images nowhere does not exist"),
        ("mil missing data", ["mil", "cv", "--data", "nowhere.csv", "--output", "o"], 2,
         "--data nowhere.csv does not exist"),
        ("wsi tile missing", ["wsi", "tile", "nowhere.svs", "--output", "o"], 2, "slides nowhere.svs does not exist"),
        ("info missing", ["info", "nowhere.nii.gz"], 2, "nowhere.nii.gz does not exist"),
        ("run missing config", ["run", "nowhere.yaml"], 2, "config nowhere.yaml does not exist"),
        ("find-best missing run", ["find-best", "nowhere"], 2, "nowhere does not exist"),
        # empty folders
        ("predict empty folder", ["predict", "--model", "hippocampus_unet", "--input", empty, "--output", "o"], 2,
         "no volumes in this folder"),
        ("wsi predict empty folder", ["wsi", "predict", "--model", empty, "--input", empty, "--output", "o"], 2,
         "no slide files"),
        ("wsi features empty folder", ["wsi", "features", "--tiles", empty, "--output", "o"], 2,
         "no tiled slides"),
        ("train empty data set", ["train", "--dataset", empty], 1, "missing folder imagesTr/"),
        # the shipped bundle holds its best weights only
        ("predict --weights last", ["predict", "--model", "hippocampus_unet", "--input", imgs, "--output",
                                    str(w / "wl"), "--weights", "last", "--no-progress"], 1, "use --weights best"),
        # a slide given to the volume verb points to the slide verb
        ("info on a slide", ["info", str(w / "slide.svs")], 1, "medseg wsi info"),
    ]


def test_every_verb_with_bad_arguments_one_line_no_traceback_documented_exit_code(work):
    (work / "slide.svs").write_bytes(b"II*\x00not really a slide")
    problems = []
    for what, argv, code, needle in _cases(work):
        r = _medseg(argv, work)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if "Traceback" in r.stderr + r.stdout:
            problems.append(f"{what}: traceback\n{r.stderr[-2000:]}")
        elif r.returncode != code:
            problems.append(f"{what}: exit {r.returncode}, expected {code}: {r.stderr.strip()[:300]}")
        elif len(lines) != 1 or needle not in lines[0]:
            problems.append(f"{what}: expected one line with {needle!r}, got {lines}")
    assert not problems, "\n".join(problems)
    assert not (work / "o").exists() and not (work / "r").exists()       # nothing was written


def test_wrong_modality_is_refused_quickly_before_inference(tmp_path):
    """An abdominal CT (3 mm, Hounsfield units, a field of view of 300 x 510 x 510 mm) given to the shipped
    hippocampus MRI model: refused before inference (no forward pass in timings.csv), exit 1. How long
    that takes is measured in benchmarks/bench_wrong_modality.py (docs/benchmarks.md), not here."""
    src = tmp_path / "ct"
    src.mkdir()
    rng = np.random.default_rng(0)
    a = np.full((100, 170, 170), -1000, np.int16)
    yy, xx = np.ogrid[:170, :170]
    a[:, ((yy - 85) / 70) ** 2 + ((xx - 85) / 80) ** 2 < 1] = 40      # soft tissue in air
    a += rng.integers(-20, 20, size=a.shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(a.transpose(2, 1, 0), np.diag([3.0, 3.0, 3.0, 1.0])), str(src / "abdomen.nii.gz"))
    r = _medseg(["predict", "--model", "hippocampus_unet", "--input", str(src), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "wrong_input" in r.stdout and "look like CT" in r.stdout and "trained on MRI" in r.stdout
    assert "another body region" in r.stdout and "--force" in r.stdout
    assert not (tmp_path / "out" / "abdomen.nii.gz").exists()
    import csv

    with open(tmp_path / "out" / "timings.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row["status"] == "failed" and row["forward_s"] == "" and row["preprocess_s"] == ""   # no inference


def test_flags_version_and_verbosity_anywhere(tmp_path):
    r = _medseg(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("medseg ")
    # --out is the documented alias of --output; -q / -v before or after the verb
    r = _medseg(["-q", "evaluate", "--pred", str(SAMPLES / "pred"), "--ref", str(SAMPLES / "labels"), "--out",
                 str(tmp_path / "e"), "--no-progress", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e" / "metrics.csv").is_file() and r.stderr == ""
    for verb in (["evaluate"], ["predict"], ["wsi", "tile"], ["mil", "cv"], ["train"], ["export"], ["fingerprint"]):
        h = _medseg([*verb, "--help"], tmp_path).stdout
        assert "--output PATH, --out PATH" in h and "-q, --quiet" in h, verb
