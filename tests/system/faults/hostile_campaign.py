"""The hostile-input campaign of issue 13, run through the command line against any checkout.

``python -m tests.system.faults.hostile_campaign [--root DIR]`` (from the repository root) builds
every attack under a temporary folder, runs ``python -m medseg ...`` with ``PYTHONPATH=DIR``
(default: this checkout) under a 3 GiB address-space limit and a timeout, and classifies each
result:

* ``ok``: the expected outcome (a one-line error for an attack, success for a legitimate input);
* ``traceback``: a Python traceback on stderr;
* ``silent``: exit 0 (or a wrong result) where the attack should have been refused;
* ``wrong``: a legitimate input refused, or a wrong answer;
* ``hang``: still running at the timeout (then killed).

It prints one line per attack (class, outcome, seconds, peak RSS) and the counts per outcome; the
figures in docs/reliability.md come from running it on main before and on the branch after.
Needs ``../shared/data`` for the DICOM and slide attacks (skipped when absent).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.paths import REPO, SHARED
from tests.system.faults import bombs

AS_LIMIT = 3 << 30
# runs medseg and reports its own peak resident memory on stderr at exit (even after a traceback); VmHWM,
# not ru_maxrss, which Linux carries over from the launching process across vfork + exec
_LAUNCH = ("import atexit, runpy, sys\n"
           "atexit.register(lambda: sys.stderr.write(\"\\nMAXRSS_KB %d\\n\" % "
           "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])))\n"
           "sys.argv = ['medseg'] + sys.argv[1:]\nrunpy.run_module('medseg', run_name='__main__')\n")


@dataclass
class Attack:
    name: str
    cls: str
    argv: list[str]
    expect: str = "error"                                   # "error", "ok" or "any" (the check decides)
    timeout: float = 60.0
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None   # may override the outcome
    cwd: Path | None = None
    env: dict[str, str] | None = None
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


def _run(a: Attack, root: Path, work: Path) -> tuple[str, float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(root), **(a.env or {}))
    if a.before:
        a.before()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, *a.argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=a.cwd or work,   # not the checkout: PYTHONPATH decides
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT)))
    try:
        out, err = proc.communicate(timeout=a.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        hung = True
    secs = time.perf_counter() - t0
    if a.after:
        a.after()
    rss = -1
    lines = err.splitlines()
    if lines and lines[-1].startswith("MAXRSS_KB "):
        rss = int(lines[-1].split()[1]) // 1024
        err = "\n".join(lines[:-1])
    res = subprocess.CompletedProcess(a.argv, proc.returncode, out, err)
    if hung:
        outcome = "hang"
    elif "Traceback (most recent call last)" in err:
        outcome = "traceback"
    elif a.expect == "any":
        outcome = "ok"
    elif a.expect == "error":
        outcome = "ok" if proc.returncode != 0 else "silent"
    else:
        outcome = "ok" if proc.returncode == 0 else "wrong"
    if a.check is not None and outcome in ("ok", "silent", "wrong"):
        outcome = a.check(res) or outcome
    last = (err.strip().splitlines() or [""])[-1][:160]
    return outcome, secs, rss, last


# ------------------------------------------------------------------------------------- attack set
def build(work: Path) -> list[Attack]:
    from tests.inference.helpers import blob_image, make_bundle, oblique_lps_affine, save_nifti

    A: list[Attack] = []
    w = work
    # ---- resource bombs
    bombs.nifti_bomb(w / "bomb16g.nii.gz", claimed=(2048, 2048, 1024), inflated=8 << 20)
    A.append(Attack("nifti header claims 16 GiB", "bombs", ["info", str(w / "bomb16g.nii.gz")]))
    bombs.nifti_bomb(w / "liar.nii.gz", claimed=(16, 16, 16), inflated=5 << 29)
    A.append(Attack("nifti stream inflates to 2.5 GiB (header 16^3)", "bombs", ["info", str(w / "liar.nii.gz")]))
    bombs.nifti_bomb(w / "gib1.nii.gz", claimed=(1024, 1024, 256), inflated=1 << 30)
    A.append(Attack("nifti valid 1 GiB from 1 MB, cap 512M", "bombs", ["info", str(w / "gib1.nii.gz")],
                    env={"MEDSEG_MAX_BYTES": "512M"}))
    bombs.nrrd_bomb(w / "big.nrrd", claimed=(4096, 4096, 4096), inflated=1 << 20)
    A.append(Attack("nrrd header claims 256 GiB", "bombs", ["info", str(w / "big.nrrd")]))
    bombs.mha_zlib_bomb(w / "stream.mha", claimed=(8, 8, 8), inflated=5 << 29)
    A.append(Attack("mha zlib stream inflates to 2.5 GiB", "bombs", ["info", str(w / "stream.mha")]))
    os.mkfifo(w / "fifo.nii.gz")
    A.append(Attack("FIFO named x.nii.gz", "bombs", ["info", str(w / "fifo.nii.gz")], timeout=20))
    bombs.png_bomb(w / "bomb.png", width=30000, height=30000)
    A.append(Attack("30000x30000 PNG as a slide", "bombs", ["wsi", "info", "--mpp", "0.5", str(w / "bomb.png")]))
    (w / "alias.yaml").write_text(bombs.yaml_alias_bomb().replace("l9:", "data:"))
    A.append(Attack("YAML alias bomb as a train config", "bombs", ["train", "--config", str(w / "alias.yaml")]))
    (w / "ok.yaml").write_text("data: {root: nowhere}\nmodel: {name: unet}\noutput: {dir: out}\n")
    A.append(Attack("20,000 nested brackets in --set", "bombs",
                    ["train", "--config", str(w / "ok.yaml"), "--set", "data.labels=" + bombs.yaml_deep()]))
    (w / "deep.yaml").write_text("a: " + bombs.yaml_deep() + "\n")
    A.append(Attack("20,000 nested brackets in a config", "bombs", ["train", "--config", str(w / "deep.yaml")]))
    labs = w / "labels8000"
    labs.mkdir()
    a = np.arange(1, 8001, dtype=np.uint16).reshape(20, 20, 20)
    save_nifti(a, labs / "c.nii.gz", np.eye(4))
    A.append(Attack("8,000 labels in one case (evaluate)", "bombs",
                    ["evaluate", "--pred", str(labs), "--ref", str(labs), "--out", str(w / "ev8000"), "--no-progress"],
                    expect="ok", timeout=180))

    # ---- bundles
    good = make_bundle(w / "bundle_good")
    cases = w / "cases"
    cases.mkdir()
    save_nifti(blob_image((16, 16, 16)), cases / "c.nii.gz", oblique_lps_affine(spacing=(1.0, 1.0, 1.0)))

    def predict(model: str, out: str, **kw) -> list[str]:
        return ["predict", "--model", model, "--input", str(cases), "--output", str(w / out), "--device", "cpu",
                "--no-progress"]

    link = make_bundle(w / "bundle_link", seed=1)
    (link / "model.safetensors").unlink()
    (link / "model.safetensors").symlink_to(good / "model.safetensors")
    A.append(Attack("weights symlinked from outside the bundle", "bundles", predict(str(link), "p_link")))
    unk = make_bundle(w / "bundle_unknown")
    (unk / "bundle.yaml").write_text((unk / "bundle.yaml").read_text() + "weights: ../../x.safetensors\n")
    A.append(Attack("unknown bundle.yaml key weights: ../../x", "bundles", predict(str(unk), "p_unk")))
    patch = make_bundle(w / "bundle_patch", patch=(4096, 4096, 4096))
    def at_load(res):  # refused when the bundle is loaded, not per case at predict time
        return None if "bundle.yaml" in res.stderr else "wrong"

    A.append(Attack("patch_size 4096^3", "bundles", predict(str(patch), "p_patch"), check=at_load))
    sp = make_bundle(w / "bundle_spacing", spacing=(0.001, 0.001, 0.001))
    A.append(Attack("spacing 0.001 mm", "bundles", predict(str(sp), "p_sp"), check=at_load))
    huge = make_bundle(w / "bundle_huge")
    text = (huge / "bundle.yaml").read_text().replace("features: [4, 8]", "features: [32768, 32768]")
    (huge / "bundle.yaml").write_text(text)
    A.append(Attack("kwargs ask for 32,768 features", "bundles", predict(str(huge), "p_huge")))
    shadow = w / "shadow"
    shipped = sorted(p.name for p in (REPO / "medseg" / "bundles").iterdir() if (p / "bundle.yaml").is_file())
    if shipped:
        make_bundle(shadow / shipped[0])
        A.append(Attack(f"folder {shipped[0]} in the working directory", "bundles",
                        predict(shipped[0], "p_shadow"), cwd=shadow))
        site = w / "site"
        make_bundle(site / shipped[0])
        A.append(Attack(f"{shipped[0]} on MEDSEG_BUNDLES", "bundles", predict(shipped[0], "p_site"),
                        env={"MEDSEG_BUNDLES": str(site)}))

    def records_bundle(res: subprocess.CompletedProcess) -> str | None:
        man = json.loads((w / "p_good" / "manifest.json").read_text())
        return None if "bundle" in man and str(good.absolute()) in res.stdout else "silent"

    A.append(Attack("predict records the bundle path and hash", "bundles", predict(str(good), "p_good"),
                    expect="ok", check=records_bundle))

    # ---- detached headers
    det = w / "detached"
    det.mkdir()
    (w / "secret.raw").write_bytes(bytes(range(64)))
    bombs.mhd_pointing_to(det / "a.mhd", "../secret.raw")
    A.append(Attack("MHD ElementDataFile=../secret.raw", "detached", ["info", str(det / "a.mhd")]))
    bombs.nhdr_pointing_to(det / "b.nhdr", "../secret.raw")
    A.append(Attack("NRRD data file: ../secret.raw", "detached", ["info", str(det / "b.nhdr")]))
    (det / "link.raw").symlink_to(w / "secret.raw")
    bombs.mhd_pointing_to(det / "c.mhd", "link.raw")
    A.append(Attack("MHD data file a symlink out of the folder", "detached", ["info", str(det / "c.mhd")]))

    # ---- output folders
    ro = w / "readonly"
    ro.mkdir()
    have_chattr = subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0
    if have_chattr:
        A.append(Attack("predict into a read-only folder", "folders", predict(str(good), "readonly")))
        A.append(Attack("predict into a new folder under a read-only one", "folders", predict(str(good), "readonly/x")))
        A.append(Attack("evaluate into a read-only folder", "folders",
                        ["evaluate", "--pred", str(labs), "--ref", str(labs), "--out", str(ro), "--no-progress"]))
    planted = w / "planted"
    planted.mkdir()
    (planted / ".medseg-batch.lock").symlink_to(w / "outside_file")

    def nothing_outside(res):
        return "silent" if (w / "outside_file").exists() else None

    A.append(Attack("lock file planted as a symlink", "folders", predict(str(good), "planted"), check=nothing_outside))
    busy = w / "busy"
    busy.mkdir()
    holder: dict = {}

    def hold():
        holder["fh"] = open(busy / ".medseg-batch.lock", "a+")
        fcntl.flock(holder["fh"].fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release():
        holder["fh"].close()

    small = w / "small_ref"
    small.mkdir()
    save_nifti((blob_image((16, 16, 16)) > 120).astype(np.uint8), small / "c.nii.gz", np.eye(4))
    A.append(Attack("evaluate into a folder another run holds", "folders",
                    ["evaluate", "--pred", str(small), "--ref", str(small), "--out", str(busy), "--no-progress"],
                    before=hold, after=release))
    own = w / "own"
    (own / "user_sub").mkdir(parents=True)
    (own / "user_sub" / ".scan.nii.gz.abcdefgh.tmp.nii.gz").write_bytes(b"user data")

    def kept(res):
        return None if (own / "user_sub" / ".scan.nii.gz.abcdefgh.tmp.nii.gz").exists() else "silent"

    A.append(Attack("clean-up of a subfolder medseg does not own", "folders", predict(str(good), "own"), expect="ok",
                    check=kept))

    # ---- manifests (a first run is made by the campaign before the attack)
    for kind in ("outside", "other", "string"):
        A.append(_manifest_attack(w, kind, good, cases))

    # ---- names
    raw = w / "raw_names"
    raw.mkdir()
    for i, n in enumerate(["a b", "a_b", "Müller", "Mäller", "x(1)", "ü"]):
        save_nifti(blob_image((16, 16, 16), seed=i), raw / f"{n}.nii.gz", oblique_lps_affine(spacing=(1.0, 1.0, 1.0)))
    A.append(Attack("names colliding after sanitising (a b / a_b, Müller / Mäller)", "names",
                    ["predict", "--model", str(good), "--input", str(raw), "--output", str(w / "p_raw"),
                     "--device", "cpu", "--no-progress"], expect="ok"))
    refs = w / "raw_refs"
    refs.mkdir()
    preds = w / "san_preds"
    preds.mkdir()
    lab = (blob_image((16, 16, 16)) > 120).astype(np.uint8)
    for n, s in [("a b", "a_b"), ("x(1)", "x_1"), ("é", "case")]:
        save_nifti(lab, refs / f"{n}.nii.gz", np.eye(4))
        save_nifti(lab, preds / f"{s}.nii.gz", np.eye(4))

    def paired(res):
        try:
            meta = json.loads((w / "ev_names" / "summary.json").read_text())["meta"]
        except (OSError, ValueError, KeyError):
            return "wrong"
        return None if not meta["ref_only"] and not meta["failed"] else "silent"

    A.append(Attack("evaluate raw-named refs against predict's names", "names",
                    ["evaluate", "--pred", str(preds), "--ref", str(refs), "--out", str(w / "ev_names"),
                     "--no-progress"], expect="ok", check=paired))
    evil = w / "evil_names"
    evil.mkdir()
    save_nifti(lab, evil / "\u202eevil.nii.gz", np.eye(4))
    (evil / "x\nERROR medseg: forged.nii.gz").write_bytes(b"junk")

    def no_forgery(res):
        csv = (w / "ev_evil" / "metrics.csv").read_text("utf-8") if (w / "ev_evil" / "metrics.csv").exists() else ""
        forged = any(ln.startswith("ERROR medseg: forged") for ln in res.stderr.splitlines())
        return "silent" if forged or "\u202e" in csv or "\u202e" in res.stderr else None

    A.append(Attack("newline and right-to-left override in file names", "names",
                    ["evaluate", "--pred", str(evil), "--ref", str(evil), "--out", str(w / "ev_evil"), "--no-progress"],
                    expect="any", check=no_forgery))   # one case fails (exit 1 or 0 by version): the check decides
    hid = w / "hidden"
    hid.mkdir()
    save_nifti(lab, hid / "a.nii.gz", np.eye(4))
    save_nifti(lab, hid / ".hidden_case.nii.gz", np.eye(4))

    def reported(res):
        return None if ".hidden_case" in res.stderr else "silent"

    A.append(Attack(".hidden_case.nii.gz is reported", "names",
                    ["evaluate", "--pred", str(hid), "--ref", str(hid), "--out", str(w / "ev_hid"), "--no-progress"],
                    expect="ok", check=reported))

    # ---- WSI values
    png = bombs.png_bomb(w / "slide.png", width=256, height=256)
    for v in ("0", "nan", "inf", "-1"):
        A.append(Attack(f"--slide-mpp {v}", "wsi", ["wsi", "tile", str(png), "--out", str(w / f"t_s{v}"),
                                                   "--slide-mpp", v]))
    for v in ("nan", "inf", "1e6"):
        A.append(Attack(f"--mpp {v}", "wsi", ["wsi", "tile", str(png), "--out", str(w / f"t_m{v}"), "--slide-mpp", "1",
                                             "--mpp", v]))
    svs = SHARED / "wsi" / "CMU-1-Small-Region.svs"
    if svs.is_file():
        raw_svs = svs.read_bytes()
        (w / "inf_mpp.svs").write_bytes(raw_svs.replace(b"MPP = 0.4990", b"MPP = inf   "))

        def good_tiled(res):
            return None if (w / "t_inf" / "CMU-1-Small-Region" / "tiles.h5").exists() else "silent"

        A.append(Attack("slide with mpp inf next to a good slide", "wsi",
                        ["wsi", "tile", str(w / "inf_mpp.svs"), str(svs), "--out", str(w / "t_inf"), "--mpp", "2"],
                        check=good_tiled))

    # ---- PHI
    dcm = SHARED / "dicom" / "udacity_study3_HCropVolume"
    if dcm.is_dir():
        import pydicom

        d = w / "dicom_phi"
        d.mkdir()
        for i, f in enumerate(sorted(dcm.iterdir())):
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = "QQZDOE^JANE"
            ds.save_as(d / f"{i:03d}.dcm")

        def no_phi(res):
            return "silent" if "QQZDOE" in res.stdout + res.stderr else None

        A.append(Attack("SeriesDescription in info (text)", "phi", ["info", str(d)], expect="ok", check=no_phi))
        A.append(Attack("SeriesDescription in info (JSON)", "phi", ["info", "--json", str(d)], expect="ok",
                        check=no_phi))
        A.append(Attack("SeriesDescription in -vv logs", "phi", ["-vv", "info", str(d)], expect="ok", check=no_phi))

    # ---- misc
    def amp_ok(res):
        return "wrong" if "training.amp" in res.stderr else None

    A.append(Attack("--set training.amp=off", "misc", ["train", "--config", str(w / "ok.yaml"), "--set",
                                                        "training.amp=off"], check=amp_ok))
    return A


def _manifest_attack(w: Path, kind: str, bundle: Path, cases: Path) -> Attack:
    out = w / f"man_{kind}"
    argv = ["predict", "--model", str(bundle), "--input", str(cases), "--output", str(out), "--device", "cpu",
            "--no-progress"]

    def forge():
        if (out / "manifest.json").exists():
            return
        subprocess.run([sys.executable, "-m", "medseg", *argv], capture_output=True, cwd=w,
                       env=dict(os.environ, PYTHONPATH=os.environ.get("CAMPAIGN_ROOT", str(REPO))))
        man = json.loads((out / "manifest.json").read_text())
        entry = man["cases"]["c"]
        real = out / "c.nii.gz"
        digest = entry["outputs"]["c.nii.gz"]
        if kind == "outside":
            (w / "elsewhere").mkdir(exist_ok=True)
            shutil.move(real, w / "elsewhere" / "c.nii.gz")
            entry["outputs"] = {"../elsewhere/c.nii.gz": digest}
        elif kind == "other":
            shutil.move(real, out / "d.nii.gz")
            entry["outputs"] = {"d.nii.gz": digest}
        else:
            real.unlink()
            man["cases"]["c"] = "done"
        (out / "manifest.json").write_text(json.dumps(man))

    def redone(res):
        return None if (out / "c.nii.gz").exists() else "silent"

    return Attack(f"hand-edited manifest entry ({kind})", "manifest", argv, expect="ok", before=forge, check=redone)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose medseg is attacked")
    args = ap.parse_args()
    args.root = args.root.resolve()
    os.environ["CAMPAIGN_ROOT"] = str(args.root)
    work = Path(tempfile.mkdtemp(prefix="medseg_hostile_"))
    try:
        attacks = build(work)
        counts: Counter = Counter()
        by_class: dict[str, Counter] = {}
        for a in attacks:
            outcome, secs, rss, last = _run(a, args.root, work)
            counts[outcome] += 1
            by_class.setdefault(a.cls, Counter())[outcome] += 1
            print(f"{a.cls:9s} {outcome:9s} {secs:6.1f}s {rss:6d}MB  {a.name}  | {last}", flush=True)
        print(f"\n{len(attacks)} attacks: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for c, cnt in by_class.items():
            print(f"  {c}: " + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    finally:
        subprocess.run(["chattr", "-i", str(work / "readonly")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
