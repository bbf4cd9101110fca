"""Run the fault campaign: read every variant, and score a batch that mixes bad and good cases.

``python -m tests.system.faults.campaign`` (from the repository root) prints the figures used in docs/reliability.md.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.paths import SAMPLES as SAMPLES_ROOT
from tests.paths import SHARED

SAMPLES = SAMPLES_ROOT / "hippocampus"
DICOM_SERIES = SHARED / "dicom" / "udacity_study3_HCropVolume"
GOOD_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006")
BATCH_CODE = {"non_finite": "non_integer_labels"}  # a batch reads predictions as label maps


@dataclass
class Outcome:
    """Per-variant results of reading every case of a corpus."""

    n: int = 0
    by_family: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)  # any exception other than MedsegError
    silent: list[str] = field(default_factory=list)  # read without an error
    wrong_code: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)  # message does not name the file


def sources(dicom: bool = True, *, label_only: bool = False):
    from tests.system.faults.generate import Sources

    image = SAMPLES / ("labels" if label_only else "images") / "hippocampus_003.nii.gz"
    return Sources(image=image, label=SAMPLES / "labels" / "hippocampus_003.nii.gz",
                   dicom=DICOM_SERIES if dicom and DICOM_SERIES.is_dir() else None)


def read_all(cases) -> Outcome:
    """Read each variant as its kind says; classify the result."""
    from medseg.errors import MedsegError
    from medseg.io import read_volume
    from medseg.metrics.evaluate import evaluate_case

    out = Outcome()
    for c in cases:
        out.n += 1
        out.by_family[c.family] += 1
        try:
            if c.kind == "pair":
                evaluate_case(read_volume(c.path, kind="label"), read_volume(c.ref, kind="label"), labels=[1, 2])
            else:
                read_volume(c.path, kind=c.kind)
            out.silent.append(c.path.name)
        except MedsegError as exc:
            out.codes[exc.code] += 1
            if exc.code not in c.expected:
                out.wrong_code.append(f"{c.path.name}: {exc.code} not in {sorted(c.expected)}")
            if c.kind != "pair" and str(c.path) not in str(exc):
                out.unnamed.append(f"{c.path.name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the campaign counts crashes
            out.crashes.append(f"{c.path.name}: {type(exc).__name__}: {exc}")
    return out


def build_batch(cases, root: Path) -> tuple[Path, Path, dict[str, frozenset[str]]]:
    """pred/ and ref/ folders: the good sample cases plus every variant as a prediction (with a good
    reference of the same name). Returns (pred, ref, expected codes per bad case id)."""
    pred, ref = root / "pred", root / "ref"
    pred.mkdir(parents=True)
    ref.mkdir()
    for cid in GOOD_CASES:
        shutil.copy(SAMPLES / "pred" / f"{cid}.nii.gz", pred)
        shutil.copy(SAMPLES / "labels" / f"{cid}.nii.gz", ref)
    expected = {}
    for i, c in enumerate(cases):
        stem = c.path.name.replace(".", "_")
        cid = f"bad_{i:03d}_{stem}"
        if c.path.is_dir():
            shutil.copytree(c.path, pred / cid)
        else:
            ext = ".nii.gz" if c.path.name.endswith(".nii.gz") else c.path.suffix
            shutil.copy(c.path, pred / f"{cid}{ext}")
        shutil.copy(c.ref or SAMPLES / "labels" / "hippocampus_003.nii.gz", ref / f"{cid}.nii.gz")
        expected[cid] = frozenset(BATCH_CODE.get(k, k) for k in c.expected)
    return pred, ref, expected


def evaluate_cli(pred: Path, ref: Path, out: Path, *extra: str) -> int:
    from medseg.cli.main import main

    return main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--no-progress", *extra])


def csv_rows_by_case(path: Path) -> dict[str, list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    out: dict[str, list[str]] = {}
    for ln in lines:
        out.setdefault(ln.split(",", 1)[0], []).append(ln)
    return out


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)
    from tests.system.faults.generate import make_corpus

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cases = make_corpus(Path(d) / "corpus", sources())
        t1 = time.perf_counter()
        res = read_all(cases)
        t2 = time.perf_counter()
        label_cases = make_corpus(Path(d) / "corpus_labels", sources(label_only=True))
        pred, ref, expected = build_batch(label_cases, Path(d) / "batch")
        rc = evaluate_cli(pred, ref, Path(d) / "out", "--workers", "2")
        rows = csv_rows_by_case(Path(d) / "out" / "metrics.csv")
        bad_ok = sum(all(r.split(",")[7].removeprefix("error:") in expected[c] for r in rows[c]) for c in expected)
        evaluate_cli(SAMPLES / "pred", SAMPLES / "labels", Path(d) / "clean")
        clean = csv_rows_by_case(Path(d) / "clean" / "metrics.csv")
        same = all(rows[c] == clean[c] for c in GOOD_CASES)
        t3 = time.perf_counter()
    print(f"variants read: {res.n} (generate {t1 - t0:.1f} s, read {t2 - t1:.1f} s)")
    print(f"crashes: {len(res.crashes)}, silent successes: {len(res.silent)}, wrong code: {len(res.wrong_code)}, "
          f"message without the file: {len(res.unnamed)}")
    print("families:", dict(sorted(res.by_family.items())))
    print("codes:", dict(sorted(res.codes.items())))
    print(f"batch: {len(expected)} bad + {len(GOOD_CASES)} good cases, rc {rc}, bad cases with the expected "
          f"error status {bad_ok}/{len(expected)}, good rows identical to a clean run: {same} ({t3 - t2:.1f} s)")
    for name in ("crashes", "silent", "wrong_code", "unnamed"):
        for item in getattr(res, name):
            print(f"  {name}: {item}")


if __name__ == "__main__":
    main()
