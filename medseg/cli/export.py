"""Export a model bundle for shipping: ``medseg export --model RUN --output DIR [--weights-dtype int8]``.

Copies ``bundle.yaml`` and the weights prediction uses (every fold's of a fold ensemble), re-stored
as float32, float16 (half the size) or int8 (a quarter: per-output-channel symmetric quantisation of
the convolution weights, biases and norm parameters in float16); no optimiser state, last-epoch
weights or out-of-fold predictions. ``medseg predict --model DIR`` reads every storage back to
float32. Measure what a smaller storage costs on your own validation cases before you ship it.
"""

from __future__ import annotations

import argparse


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundle folder or registered bundle name")
    from medseg.cli.common import add_output

    add_output(p, "new folder for the exported bundle (must not exist)")
    p.add_argument("--weights-dtype", choices=["float32", "float16", "int8"], default="float16",
                   help="how the weights are stored (default float16)")
    p.add_argument("--weights", choices=["best", "last"], default="best",
                   help="which weights to export: model.safetensors (best, default) or last.safetensors")


def run(args: argparse.Namespace) -> int:
    from medseg.bundle import export_bundle
    from medseg.cli.common import check_output_dir
    from medseg.errors import ConfigError
    from medseg.inference.bundles import resolve_bundle

    if args.output.exists():
        raise ConfigError(f"--output {args.output} already exists; give a new folder", code="exists")
    check_output_dir(args.output)
    out = export_bundle(resolve_bundle(args.model), args.output, storage=args.weights_dtype, weights=args.weights)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {args.model} -> {out} ({args.weights_dtype} weights, {size / 2 ** 20:.1f} MB)")
    return 0
