"""benchmarks/mil_seeds.py: the per-seed goal table, worked out by hand on two made-up seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
mil_seeds = pytest.importorskip("mil_seeds")


def _summary(folder: Path, name: str, data: str, model: str, reps: list[float]) -> None:
    (folder / name).mkdir(parents=True)
    s = {"data": data, "config": {"model": model}, "accuracy_mean": sum(reps) / len(reps),
         "accuracy_repeat_means": reps}
    (folder / name / "summary.json").write_text(json.dumps(s))


def test_seed_table_by_hand(tmp_path):
    # FOX attention (Ilse 0.615): seed 0 repeats 0.62, 0.63 -> 0.625 (at or above); seed 1: 0.60, 0.61 -> 0.605
    # all 4 repeats: mean 0.615, sd 0.012910 -> se 0.006455; sd of the seed means 0.014142
    _summary(tmp_path / "run0", "fox", "fox_100x100_matlab.mat", "attention_mil", [0.62, 0.63])
    _summary(tmp_path / "run1", "fox", "fox_100x100_matlab.mat", "attention_mil", [0.60, 0.61])
    # MUSK1 gated (Ilse 0.900) only in seed 1: 0.90 -> equal counts as at or above
    _summary(tmp_path / "run1", "musk1", "musk1.csv", "gated_attention_mil", [0.90, 0.90])
    runs = mil_seeds._runs(str(tmp_path / "run{S}"))
    assert sorted(runs) == [0, 1]
    lines = mil_seeds.table("x", runs)
    musk, fox = lines[4], lines[5]
    assert musk == "| MUSK1 | gated_attention_mil | - | **0.900** | - | 0.900 ± 0.000 (2) | 0.900 |"
    assert fox == "| FOX | attention_mil | **0.625** | 0.605 | 0.014 | 0.615 ± 0.006 (4) | 0.615 |"
    assert lines[-1].startswith("| rows at or above Ilse et al. | | 1 of 8 | 1 of 8 |")
