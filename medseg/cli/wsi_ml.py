"""``medseg wsi features|train|predict`` (parsers and runners; see medseg.cli.wsi)."""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"unknown wsi command {args.wsi_cmd}")
