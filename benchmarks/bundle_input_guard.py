"""The ``input_guard`` of a data set, as ``medseg train`` records it in a bundle (medseg.preprocess.guard),
printed as YAML to paste into a bundle.yaml made before bundles carried one.

    python benchmarks/bundle_input_guard.py ../shared/data/hippocampus --modality MRI

Reads every case of ``imagesTr/`` + ``labelsTr/`` (a fold ensemble's folds together trained on all of
them) with the training checks; ``--modality`` names channel 0's modality when the data set has no
dataset.json (MSD Task04 Hippocampus is MRI).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.io.dataset import scan_dataset  # noqa: E402
from medseg.preprocess.guard import input_guard, looks_like_ct  # noqa: E402
from medseg.training.dataset import load_cases  # noqa: E402
from medseg.training.plan_dataset import modalities_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("root", type=Path, help="data set folder (imagesTr/, labelsTr/)")
    ap.add_argument("--modality", default=None, help="channel 0's modality (default: dataset.json, else a guess)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    info = scan_dataset(args.root)
    cases = list(load_cases(info).values())
    guess = "CT" if looks_like_ct(cases[0].image[0].ravel()) else "other"
    modality = args.modality or modalities_of(info.meta or {}, info.channels, guess)[0]
    guard = input_guard(((c.image[0], c.spacing_mm, c.label) for c in cases), modality)
    print(yaml.safe_dump({"input_guard": guard}, sort_keys=False, default_flow_style=None), end="")
    sys.stdout.flush()
    print(f"# {len(cases)} cases in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
