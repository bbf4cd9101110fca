"""Run a staged pipeline: ``medseg run CONFIG.yaml [--set key=value ...]``.

The resolved config (after overrides and pipeline expansion) is written to
``OUTPUT/config.resolved.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="pipeline config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set output=out/x or --set params.evaluate.workers=2")


def run(args: argparse.Namespace) -> int:
    from medseg import config as cfgmod
    from medseg.pipeline import run_pipeline

    cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
    ctx = run_pipeline(cfg, config_path=args.config.resolve())
    summary = {k: v for k, v in ctx.results.items() if not k.startswith("_")}
    print(json.dumps({"output": str(ctx.output_dir), "stages": list(summary)}, indent=None))
    for name, res in summary.items():
        if isinstance(res, dict) and res.get("report"):
            print(f"{name}: report at {res['report']}")
    return 0
