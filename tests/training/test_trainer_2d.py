"""2D slice-wise training (``model.spatial_dims: 2``): train -> bundle -> ``medseg predict``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medseg.bundle import load_bundle
from medseg.errors import ConfigError
from medseg.training import train
from medseg.training.checkpoint import state_digest
from medseg.weights import load_weights
from tests.training.helpers import REPO_ROOT, _save, make_case, tiny_config

# y is the coarsest axis: the slicing axis must be 1 (not the default 0), in training and in the predictor
SPACING = (1.0, 2.0, 1.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds2d")
    rng = np.random.default_rng(1)
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for i in range(5):
        img, lab = make_case(rng, (16, 20, 16))
        _save(img, root / "imagesTr" / f"case_{i:03d}.nii.gz", spacing=SPACING)
        _save(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz", spacing=SPACING)
    return root


def _cfg_2d(root, out, **training):
    cfg = tiny_config(root, out, **training)
    cfg["data"]["labels"] = {1: "anterior", 2: "posterior"}
    cfg["model"] = {"name": "unet", "spatial_dims": 2, "features": [4, 8], "deep_supervision": True}
    cfg["plan"] = {"patch_size": [16, 20, 16], "divisor": 2}
    return cfg


def test_2d_training_bundle_and_predict(dataset, tmp_path):
    out = tmp_path / "b2d"
    summary = train(_cfg_2d(dataset, out, epochs=2, iters_per_epoch=3))
    model, meta = load_bundle(out)                  # strict load of the saved 2D weights into a 2D unet
    assert meta["model"]["kwargs"]["spatial_dims"] == 2
    assert meta["slice_axis"] == 1 and meta["patch_size"] == [16, 16]      # (z, x): y is sliced
    assert meta["plan"]["spacing_mm"] == list(SPACING)
    assert all(w.ndim in (1, 4) for w in model.state_dict().values() if w.is_floating_point())  # 2D convs
    last, _ = load_weights(out / "last.safetensors")
    assert state_digest(last) == summary["weights_digest"]

    # the predictor slices along the same axis as training: on a volume of exactly one window per
    # slice its probabilities equal the training wrapper's softmax
    from medseg.inference.predictor import Predictor
    from medseg.models.slicewise import SliceWise

    pred = Predictor.from_bundle(out, weights="last")
    x = torch.randn(1, 1, 16, 7, 16)
    probs = pred._probabilities(x[0].numpy(), SPACING)
    with torch.no_grad():
        ref = torch.softmax(SliceWise(model, axis=1)(x), 1)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    with torch.no_grad():   # and a wrong axis would give something else
        wrong = torch.softmax(SliceWise(model, axis=0)(x), 1)[0].numpy()
    assert np.abs(probs - wrong).max() > 1e-3
    # a case whose own grid spacing is slightly coarser along z still slices along the trained axis
    np.testing.assert_allclose(pred._probabilities(x[0].numpy(), (2.01, 2.0, 1.0)), ref, atol=1e-5)

    # the CLI on a tiny volume of another size: a mask on the input grid
    rng = np.random.default_rng(7)
    img, _ = make_case(rng, (12, 18, 14))
    (tmp_path / "in").mkdir()
    _save(img, tmp_path / "in" / "vol.nii.gz", spacing=SPACING)
    r = subprocess.run([sys.executable, "-m", "medseg", "predict", "--model", str(out), "--input",
                        str(tmp_path / "in"), "--output", str(tmp_path / "pred"), "--no-progress"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                       env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    from medseg.io import read_volume

    src = read_volume(tmp_path / "in" / "vol.nii.gz")
    mask = read_volume(tmp_path / "pred" / "vol.nii.gz")
    assert mask.shape == (12, 18, 14) and mask.same_grid(src)
    assert set(np.unique(mask.array).tolist()) <= {0, 1, 2}


def test_2d_resume_is_bit_identical(dataset, tmp_path, monkeypatch):
    """Interrupted in epoch 2 and resumed from the epoch-1 checkpoint of the 2D net = uninterrupted."""
    import medseg.training.trainer as trainer_mod

    full = train(_cfg_2d(dataset, tmp_path / "full", epochs=2, iters_per_epoch=2))
    real_loss, calls = trainer_mod.deep_supervision_loss, []

    def interrupting_loss(*a, **kw):
        calls.append(1)
        if len(calls) == 3:                 # first step of epoch 2
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    monkeypatch.setattr(trainer_mod, "deep_supervision_loss", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg_2d(dataset, tmp_path / "part", epochs=2, iters_per_epoch=2))
    monkeypatch.setattr(trainer_mod, "deep_supervision_loss", real_loss)
    resumed = train(_cfg_2d(dataset, tmp_path / "part", epochs=2, iters_per_epoch=2), resume=True)
    assert resumed["weights_digest"] == full["weights_digest"]


@pytest.mark.parametrize("dims", [1, 4, "2", True])
def test_invalid_spatial_dims_is_a_config_error(dataset, tmp_path, dims):
    cfg = _cfg_2d(dataset, tmp_path / "x")
    cfg["model"]["spatial_dims"] = dims
    with pytest.raises(ConfigError, match=r"model\.spatial_dims must be 2 .* or 3, got"):
        train(cfg)
    assert not (tmp_path / "x").exists()
