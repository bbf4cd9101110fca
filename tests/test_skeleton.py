import numpy as np
import pytest

from medseg import config as cfgmod
from medseg.errors import ConfigError
from medseg.registry import Registry
from medseg.volume import Volume


def test_volume_affine_and_orientation():
    v = Volume(np.zeros((2, 3, 4)), spacing_mm=(3.0, 2.0, 1.0), origin_mm=(10, 20, 30))
    # default direction: z->S, y->A, x->R
    assert v.affine @ np.array([1, 1, 1, 1]) == pytest.approx([11, 22, 33, 1])
    assert v.orientation == "RAS"


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -1, 1), (1, float("nan"), 1)])
def test_volume_rejects_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing_mm=spacing)


def test_volume_rejects_skewed_direction():
    d = np.eye(3)
    d[0, 1] = 0.3
    with pytest.raises(ValueError, match="orthonormal"):
        Volume(np.zeros((2, 2, 2)), direction=d)


def test_registry_unknown_name_lists_known():
    r = Registry("model")
    r.register("a")(lambda: 1)
    with pytest.raises(ConfigError, match="unknown model 'b' \\(known: a\\)"):
        r.get("b")


def test_yaml_duplicate_keys_rejected():
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        cfgmod.loads("a: 1\nb: 2\na: 3\n")


def test_yaml_no_python_objects():
    with pytest.raises(ConfigError):
        cfgmod.loads("x: !!python/object/apply:os.system ['echo hi']")


def test_yaml_exponent_floats_are_numbers():
    # YAML 1.1 (PyYAML) alone reads 5e-4 as a string; medseg reads it as YAML 1.2 does
    assert cfgmod.loads("lr: 5e-4\nb: -1.5E+2\nc: 1e3\nd: 1_0e1") == {"lr": 0.0005, "b": -150.0, "c": 1000.0,
                                                                   "d": 100.0}
    assert cfgmod.loads("a: 5e\nb: e5\nc: 1e-\nd: '5e-4'") == {"a": "5e", "b": "e5", "c": "1e-", "d": "5e-4"}
    assert cfgmod.apply_overrides({"t": {"lr": 1.0}}, ["t.lr=5e-4"]) == {"t": {"lr": 0.0005}}


def test_overrides():
    cfg = {"stages": [{"stage": "a", "params": {"k": 1}}], "output": "o"}
    out = cfgmod.apply_overrides(cfg, ["stages.0.params.k=2.5", "output=x/y", "new.deep=true"])
    assert out["stages"][0]["params"]["k"] == 2.5 and out["output"] == "x/y" and out["new"] == {"deep": True}
    assert cfg["stages"][0]["params"]["k"] == 1
    with pytest.raises(ConfigError):
        cfgmod.apply_overrides(cfg, ["noequals"])
