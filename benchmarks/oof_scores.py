"""Out-of-fold scores of a fold-ensemble run (``medseg train --plan ... --fold all``).

Every case is scored once, on the prediction of the fold that held it out (``fold_F/oof/CASE.nii.gz``,
made as the ensemble predicts, mirroring included), after the post-processing the run chose on those
same predictions (``postprocess:`` in ``RUN/bundle.yaml``; ``--raw`` scores them before it). The
references are the data set's ``labelsTr``. Scoring is ``medseg evaluate`` (surface-distance
definitions; 95 % bootstrap CIs in its summary).

    PYTHONPATH=. python benchmarks/oof_scores.py training_runs/hippocampus_unet --out out/oof_hippo \\
        --label-names 1=anterior,2=posterior --nsd-tolerance-mm 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path


def collect(run: Path, out: Path, *, raw: bool) -> int:
    from medseg.bundle import read_meta
    from medseg.io import read_volume, write_volume
    from medseg.io.dataset import scan_dataset
    from medseg.postprocess import apply_postprocess

    meta = read_meta(run)
    rules = None if raw else meta.get("postprocess")
    refs = {c.case: c.label for c in scan_dataset(meta["data"]["root"]).cases}
    (out / "pred").mkdir(parents=True, exist_ok=True)
    (out / "ref").mkdir(parents=True, exist_ok=True)
    n = 0
    for f in meta["folds"]:
        for p in sorted((run / f"fold_{f}" / "oof").glob("*.nii.gz")):
            case = p.name[: -len(".nii.gz")]
            v = read_volume(p)
            arr = apply_postprocess(v.array, v.spacing_mm, rules) if rules else v.array
            write_volume(dataclasses.replace(v, array=arr), out / "pred" / p.name)
            link = out / "ref" / p.name
            if not link.exists():
                os.symlink(Path(refs[case]).resolve(), link)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label-names", default=None)
    ap.add_argument("--nsd-tolerance-mm", default="1.0")
    ap.add_argument("--raw", action="store_true", help="score before the chosen post-processing")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    n = collect(a.run, a.out, raw=a.raw)
    from medseg.cli.main import main as medseg

    argv = ["evaluate", "--pred", str(a.out / "pred"), "--ref", str(a.out / "ref"), "--out", str(a.out / "eval"),
            "--nsd-tolerance-mm", a.nsd_tolerance_mm, "--workers", a.workers, "--no-progress"]
    if a.label_names:
        argv += ["--label-names", a.label_names]
    rc = medseg(argv)
    print(json.dumps({"cases": n, "postprocess": not a.raw, "evaluate_rc": rc, "eval": str(a.out / "eval")}))


if __name__ == "__main__":
    main()
