"""Analyse a data set and propose preprocessing: ``medseg fingerprint --images DIR [--labels DIR] --output plan.yaml``.

Reads every image (and the label with the same case name, if ``--labels``), computes the
fingerprint (spacings, shapes, foreground intensity statistics) and writes the proposed plan
(target spacing, crop, normalisation, interpolation) with the fingerprint under ``fingerprint:``.
Use the file with ``medseg.preprocess.apply_plan``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net channel suffix of image names (case_0000)


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="folder (or file) of images")
    p.add_argument("--labels", type=Path, default=None,
                   help="folder of label maps with the same case names (default: none; statistics over the "
                   "whole image)")
    from medseg.cli.common import add_output

    add_output(p, "plan to write (YAML)")
    p.add_argument("--modality", choices=["CT", "other"], default=None,
                   help="override the modality guess (CT: HU clipping + data-set z-score; default: guessed from the "
                   "intensities)")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (sorted; default: all)")
    p.add_argument("--samples-per-case", type=int, default=10_000,
                   help="foreground voxels sampled per case for intensity statistics")


def _match_labels(images: list[Path], label_dir: Path) -> list[Path | None]:
    from medseg.errors import InputError
    from medseg.fsutil import case_id
    from medseg.io import list_cases

    by_id = {case_id(p): p for p in list_cases(label_dir)}
    out: list[Path | None] = []
    for ip in images:
        cid = case_id(ip)
        lp = by_id.get(cid) or by_id.get(_CHANNEL.sub("", cid))
        if lp is None:
            raise InputError(f"no label for case '{cid}' in the labels folder", path=label_dir, code="missing_label")
        out.append(lp)
    return out


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.cli.common import check_input, check_output_file
    from medseg.errors import InputError
    from medseg.io import list_cases
    from medseg.preprocess.fingerprint import fingerprint
    from medseg.preprocess.plan import propose_plan

    check_input(args.images, "--images")
    check_input(args.labels, "--labels", kind="folder")
    check_output_file(args.output)
    images = list_cases(args.images)
    if args.max_cases is not None:
        images = images[: max(1, args.max_cases)]
    if not images:
        raise InputError("no images found (NIfTI/NRRD/MHA files or DICOM folders)", path=args.images,
                         code="no_cases")
    labels = _match_labels(images, args.labels) if args.labels else None
    fp = fingerprint(images, labels, samples_per_case=args.samples_per_case)
    plan = propose_plan(fp, modality=args.modality)
    cfgmod.save_yaml({**plan, "fingerprint": fp}, args.output)
    print(json.dumps({"plan": str(args.output), "cases": fp["n_cases"], "failed": fp["failed"],
                      "modality": plan["modality"], "target_spacing_mm": plan["spacing_mm"],
                      "normalization": plan["normalization"]["scheme"]}))
    return 0 if not fp["failed"] else 1
