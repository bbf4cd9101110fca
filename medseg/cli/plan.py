"""Plan an experiment for a data set: ``medseg plan --dataset DIR [--output plan.yaml] [--device auto|cpu|cuda]``.

Reads a data set in the MSD / nnU-Net layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``),
checks every case (label on the image grid, every channel present, label values listed in
``dataset.json``, no NaN) and stops with exit code 1 naming each bad case before anything is
planned. Then computes the fingerprint and writes the plan: target spacing, per-channel
normalisation and, per configuration (``3d_fullres``, ``2d``, ``3d_lowres`` when useful), patch
size, poolings, kernels, features and batch size from the memory/compute budget. The rules are
in ``docs/planning.md``; the YAML is meant to be read and edited.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, required=True, help="data set folder (imagesTr/, labelsTr/, dataset.json)")
    from medseg.cli.common import add_output

    add_output(p, "plan to write (default: DATASET_NAME.plan.yaml in the working directory)", required=False)
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="the device the model will train on, whose budget the plan fits: auto (CUDA when "
                   "available here, else cpu), cpu, cuda or cuda:N (a GPU plan can be made without a GPU) "
                   "(default: %(default)s)")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="memory budget of one training iteration (default: 4 on cpu, 8 on cuda)")
    p.add_argument("--gflop-per-iteration", type=float, default=None,
                   help="compute budget of one training iteration on the CPU (default: 120, about 3 s on 2 cores)")
    p.add_argument("--label-names", default=None, metavar="1=NAME,2=NAME|FILE",
                   help="name the labels: 1=anterior,2=posterior (commas between pairs) or a file (a "
                   "dataset.json, or N=NAME lines); over dataset.json's names (default: dataset.json's, else "
                   "label_1, label_2 ...)")
    p.add_argument("--samples-per-case", type=int, default=10_000,
                   help="foreground voxels sampled per case for intensity statistics (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.cli.common import check_input, check_output_file
    from medseg.device import resolve_device
    from medseg.training.plan_dataset import plan_dataset

    check_input(args.dataset, "--dataset", kind="folder")
    check_output_file(args.output)
    dev = str(args.device).strip().lower()
    if dev not in ("auto", "cpu") and not dev.startswith("cuda"):
        from medseg.errors import ConfigError

        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    # a plan for a GPU may be made on a machine without one: only auto looks at this machine
    device = ("cuda" if resolve_device("auto").type == "cuda" else "cpu") if dev == "auto" else dev.split(":")[0]

    if args.memory_gb is not None and not args.memory_gb > 0:
        from medseg.errors import ConfigError

        raise ConfigError(f"--memory-gb must be > 0, got {args.memory_gb}")
    from medseg.metrics.params import parse_label_names

    names = parse_label_names(args.label_names, None)
    plan = plan_dataset(args.dataset, device=device, memory_gb=args.memory_gb,
                        gflop_per_iteration=args.gflop_per_iteration, samples_per_case=args.samples_per_case,
                        label_names=names)
    out = args.output or Path(f"{plan['dataset']['name']}.plan.yaml")
    cfgmod.save_yaml(plan, out)
    print(summary_text(plan))
    print(f"plan written to {out}")
    return 0


def summary_text(plan: dict) -> str:
    ds = plan["dataset"]
    lines = [f"data set {ds['name']}: {ds['n_cases']} cases, channels {', '.join(plan['modalities'])}, labels "
             + ", ".join(f"{k}={v}" for k, v in plan["labels"].items() if int(k) != 0),
             f"target spacing {plan['target_spacing_mm']} mm (z, y, x), median shape there "
             f"{plan['median_shape_at_target']}; budget {plan['budget']}"]
    for name, c in plan["configurations"].items():
        lines.append(f"  {name:<11} spacing {c['spacing_mm']} patch {c['patch_size']} batch {c['batch_size']} "
                     f"poolings {c['poolings_per_axis']} features {c['model']['features']} "
                     f"norm {c['normalization']} (~{c['estimate']['gflop_per_iteration']} GFLOP, "
                     f"{c['estimate']['memory_gb']} GB per iteration)")
    return "\n".join(lines)
