"""The stages sit above the layers they run, the runner above the stages; TTA axes are read in one place."""

import ast
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from tests.paths import REPO

PKG = REPO / "medseg"


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


def test_tta_axes_from_the_cli_and_from_yaml():
    from medseg.inference.tta import tta_axes_from_param, tta_axes_from_text

    assert tta_axes_from_text("") == () and tta_axes_from_text(" 1, 2") == (1, 2)
    assert tta_axes_from_param(True) == (0, 1, 2) and tta_axes_from_param(None) == ()
    assert tta_axes_from_param([2, 0]) == (2, 0)
    with pytest.raises(ConfigError, match="--tta takes axes like 0,1,2"):
        tta_axes_from_text("x")
    with pytest.raises(ConfigError, match="--tta axes must be distinct values of 0, 1, 2"):
        tta_axes_from_text("1,1")
    with pytest.raises(ConfigError, match="stage 'predict': tta must be true/false or a list of axes"):
        tta_axes_from_param([0, 3])
