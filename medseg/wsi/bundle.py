"""A trained whole-slide classifier as a folder: ``bundle.json`` + encoder + aggregator weights.

``bundle.json`` holds the tiling parameters, encoder name and normalisation, class names and the
decision threshold, so ``medseg wsi predict`` needs nothing else.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.fsutil import atomic_write_text
from medseg.mil.fit import MILEnsemble, load_mil, save_mil
from medseg.wsi.features import EncoderSpec
from medseg.wsi.tile_slides import TilingParams

__all__ = ["save_bundle", "load_bundle", "bundle_note"]


def save_bundle(out: Path, *, tiling: TilingParams, spec: EncoderSpec, ens: MILEnsemble,
                classes: list[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    if not spec.weights:
        raise ValueError("a bundle needs the encoder's weights file (save the initial weights of an untrained one)")
    out.mkdir(parents=True, exist_ok=True)
    enc_name = "encoder.safetensors"
    if Path(spec.weights).resolve() != (out / enc_name).resolve():
        shutil.copyfile(spec.weights, out / enc_name)
    save_mil(ens, out / "aggregator.safetensors")
    doc = {"format": "medseg-wsi-bundle/1", "tiling": asdict(tiling),
           "encoder": {"name": spec.name, "weights": enc_name, "mean": list(spec.mean), "std": list(spec.std)},
           "aggregator": "aggregator.safetensors", "classes": classes or ["0", "1"],
           "threshold": ens.config.threshold, **(extra or {})}
    atomic_write_text(out / "bundle.json", json.dumps(doc, indent=1))
    return out


def load_bundle(path: Path) -> tuple[TilingParams, EncoderSpec, MILEnsemble, dict[str, Any]]:
    f = path / "bundle.json" if path.is_dir() else path
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"not a medseg model bundle ({exc})", path=f, code="bad_bundle") from None
    if doc.get("format") != "medseg-wsi-bundle/1":
        raise InputError("not a medseg model bundle (format key missing)", path=f, code="bad_bundle")
    root = f.parent
    tiling = TilingParams(**doc["tiling"])
    e = doc["encoder"]
    spec = EncoderSpec(name=e["name"], weights=str(root / e["weights"]) if e.get("weights") else None,
                       mean=tuple(e["mean"]), std=tuple(e["std"]))
    return tiling, spec, load_mil(root / doc["aggregator"]), doc


def bundle_note(path: Path) -> str:
    """The bundle's free-text ``note`` (e.g. that it was trained on made-up labels), or ``""``."""
    f = path / "bundle.json" if path.is_dir() else path
    try:
        return str(json.loads(f.read_text()).get("note", ""))
    except (OSError, ValueError, AttributeError):
        return ""  # load_bundle reports unreadable bundles
