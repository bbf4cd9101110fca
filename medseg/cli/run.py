"""Run a staged pipeline: ``medseg run CONFIG.yaml [--set key=value ...]``.

The resolved config (after overrides and pipeline expansion) is written to
``OUTPUT/config.resolved.yaml``. The whole resolved config is checked before any stage runs:
every stage name, every stage's parameters against what the stage takes (a misspelt key is named,
with the closest known one) and the output folder; a problem exits with code 2 and nothing is done.
A case (or slide) that failed in any stage is listed and the exit code is 1; the other cases finish.
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
    from medseg.cli.common import check_input
    from medseg.pipeline import run_pipeline

    check_input(args.config, "config", kind="file")
    cfg = cfgmod.apply_overrides(cfgmod.load_yaml(args.config), args.overrides)
    ctx = run_pipeline(cfg, config_path=args.config.resolve())
    summary = {k: v for k, v in ctx.results.items() if not k.startswith("_")}
    print(json.dumps({"output": str(ctx.output_dir), "stages": list(summary)}, indent=None))
    for name, res in summary.items():
        if isinstance(res, dict) and res.get("report"):
            print(f"{name}: report at {res['report']}")
    return report_failures(summary)


def report_failures(results: dict) -> int:
    """Print the cases each stage reports as failed (``failed: {case: "error:..."}``); 1 if any, else 0."""
    bad = 0
    for name, res in results.items():
        failed = res.get("failed") if isinstance(res, dict) else None
        errors = {c: s for c, s in (failed or {}).items() if str(s).startswith("error")}
        if errors:
            bad += len(errors)
            print(f"{name}: {len(errors)} failed: " + ", ".join(f"{c} ({s})" for c, s in sorted(errors.items())[:20]))
    return 1 if bad else 0
