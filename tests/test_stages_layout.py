"""The stages sit above the layers they run, the runner above the stages."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "medseg"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("layer", ["preprocess", "metrics", "inference", "wsi"])
def test_layers_never_import_the_stages_or_the_runner(layer):
    for path in sorted((PKG / layer).rglob("*.py")):
        bad = {n for n in _imports(path) if n.startswith(("medseg.stages", "medseg.pipeline"))}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


def test_stages_never_import_the_runner():
    for path in sorted((PKG / "stages").rglob("*.py")):
        assert not {n for n in _imports(path) if n.startswith("medseg.pipeline")}, path.name


def test_importing_the_stages_registers_every_stage():
    from medseg.stages import STAGES

    assert STAGES.names() == sorted([
        "crop_foreground", "denoise_gaussian", "denoise_median", "denoise_curvature", "resample", "zscore", "minmax",
        "ct_window", "evaluate", "predict", "postprocess", "wsi_tile", "wsi_features", "wsi_mil", "wsi_bcl"])

