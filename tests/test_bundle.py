"""Model bundles: round trip, wrong architecture, damaged files, no pickled code executed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from medseg.bundle import load_bundle, write_meta
from medseg.errors import InputError
from medseg.training.checkpoint import STATE_FILE, load_checkpoint
from medseg.weights import load_weights, save_weights
from tests.training.helpers import TINY, TinyTestNet


def _bundle(tmp_path, width=4, out_channels=3):
    d = tmp_path / "b"
    torch.manual_seed(0)
    net = TinyTestNet(in_channels=1, out_channels=out_channels, width=width)
    save_weights(net.state_dict(), d / "model.safetensors", architecture=TINY)
    write_meta(d, {"model": {"name": TINY, "kwargs": {"spatial_dims": 3, "in_channels": 1,
                                                       "out_channels": out_channels, "width": width}},
                   "labels": {0: "background", 1: "a", 2: "b"}, "plan": {"spacing_mm": [1.0, 1.0, 1.0]}})
    return d, net


def test_roundtrip_gives_the_same_predictions(tmp_path):
    d, net = _bundle(tmp_path)
    model, meta = load_bundle(d)
    assert meta["labels"] == {0: "background", 1: "a", 2: "b"} and not model.training
    x = torch.randn(1, 1, 8, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_weights_of_another_architecture(tmp_path):
    d, _ = _bundle(tmp_path)
    other = TinyTestNet(in_channels=1, out_channels=3, width=6)          # other widths -> shape mismatch
    save_weights(other.state_dict(), d / "model.safetensors", architecture=TINY)
    msg = r"14 shape mismatch.*aux\.weight: file \(3, 12, 1, 1, 1\) vs model \(3, 8, 1, 1, 1\)"
    with pytest.raises(InputError, match=msg) as ei:
        load_bundle(d)
    assert ei.value.code == "wrong_architecture"
    save_weights({"conv.weight": torch.zeros(2, 2)}, d / "model.safetensors")
    with pytest.raises(InputError, match="missing key.*unexpected key"):
        load_bundle(d)
    save_weights(other.state_dict(), d / "model.safetensors", architecture="unet")
    with pytest.raises(InputError, match="'unet'"):
        load_bundle(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_file(tmp_path, damage):
    d, _ = _bundle(tmp_path)
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01nonsense" * 50, "empty": b""}[damage])
    with pytest.raises(InputError, match="safetensors") as ei:
        load_bundle(d)
    assert ei.value.code == "corrupt" and "model.safetensors" in str(ei.value)


def test_missing_pieces(tmp_path):
    with pytest.raises(InputError, match="bundle.yaml is missing"):
        load_bundle(tmp_path)
    d, _ = _bundle(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(InputError, match="missing"):
        load_bundle(d)
    with pytest.raises(InputError, match="missing"):
        load_weights(d / "nothing.safetensors")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickled_code_in_train_state_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d, net = _bundle(tmp_path)
    save_weights(net.state_dict(), d / "last.safetensors", architecture=TINY, extra={"epoch": "1"})
    with open(d / STATE_FILE, "wb") as fh:
        pickle.dump({"epoch": 1, "optimizer": {}, "torch_rng": _Evil(), "history": []}, fh, protocol=2)
    opt = torch.optim.AdamW(net.parameters())
    with pytest.raises(InputError, match="damaged or not a medseg checkpoint"):
        load_checkpoint(d, model=net, architecture=TINY, optimizer=opt, scaler=None)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_checkpoint_of_another_architecture(tmp_path):
    d, net = _bundle(tmp_path)
    opt = torch.optim.AdamW(net.parameters())
    save_weights(net.state_dict(), d / "last.safetensors", architecture="unet", extra={"epoch": "1"})
    torch.save({"epoch": 1, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "history": []},
               d / STATE_FILE)
    with pytest.raises(InputError, match="architecture 'unet'"):
        load_checkpoint(d, model=net, architecture=TINY, optimizer=opt, scaler=None)
    save_weights(net.state_dict(), d / "last.safetensors", architecture=TINY, extra={"epoch": "2"})
    with pytest.raises(InputError, match="interrupted while saving"):
        load_checkpoint(d, model=net, architecture=TINY, optimizer=opt, scaler=None)


def test_int8_storage_is_per_channel_symmetric_by_hand(tmp_path):
    import torch

    from medseg.weights import load_weights, quantize_int8, save_weights

    w = torch.tensor([[[0.5, -1.0], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[2.54, -0.01], [1.27, 0.02]]])
    q, s = quantize_int8(w)
    # channel 0: s = 1/127 -> q = round(127 * w); channel 1 all zero: s = 1, q = 0; channel 2: s = 0.02
    np.testing.assert_allclose(s.numpy(), [1 / 127, 1.0, 0.02], rtol=1e-6)
    assert q[0].tolist() == [[64, -127], [32, 0]] and q[1].abs().sum() == 0
    assert q[2].tolist() == [[127, -0], [64, 1]]          # round(-0.5) = -0 (half to even), 63.5 -> 64
    state = {"conv.weight": w, "conv.bias": torch.tensor([0.1, -0.2, 0.3]), "steps": torch.tensor(3)}
    for storage, tol in (("float32", 0.0), ("float16", 1e-3), ("int8", 0.011)):
        p = save_weights(state, tmp_path / f"{storage}.safetensors", architecture="unet", storage=storage)
        back, meta = load_weights(p)
        assert set(back) == set(state) and all(v.dtype == state[k].dtype for k, v in back.items())
        err = (back["conv.weight"] - w).abs()
        assert float(err.max()) <= tol + 1e-7
        if storage == "int8":        # at most half a step of each channel
            assert bool((err <= s.reshape(-1, 1, 1) / 2 + 1e-7).all())
        assert meta.get("storage", "float32") == storage and back["steps"].item() == 3
    big = {"w": torch.randn(64, 32, 3, 3, 3, generator=torch.Generator().manual_seed(0))}
    sizes = {st: save_weights(big, tmp_path / f"big_{st}.safetensors", storage=st).stat().st_size
             for st in ("float32", "float16", "int8")}
    assert sizes["int8"] < 0.3 * sizes["float32"] and sizes["float16"] < 0.55 * sizes["float32"]


def test_export_keeps_only_what_prediction_needs_and_predicts_alike(tmp_path):
    from medseg.bundle import export_bundle, read_meta
    from medseg.errors import InputError
    from medseg.inference.predictor import Predictor
    from medseg.volume import Volume
    from tests.inference.helpers import blob_image, make_bundle

    src = make_bundle(tmp_path / "run" / "fold_0", seed=1)
    make_bundle(tmp_path / "run" / "fold_1", seed=2)
    (src / "train_state.pt").write_bytes(b"x")
    meta = read_meta(src)
    meta.pop("format")
    from medseg.bundle import write_meta

    write_meta(tmp_path / "run", {**meta, "folds": [0, 1]})
    vol = Volume(blob_image((16, 16, 16), seed=3), (1.0, 1.0, 1.0))
    want = Predictor.from_bundle(tmp_path / "run").predict_volume(vol, probabilities=True).probabilities
    for storage, atol in (("float16", 2e-3), ("int8", 5e-2)):   # untrained tiny nets: the worst voxel
        out = export_bundle(tmp_path / "run", tmp_path / f"exp_{storage}", storage=storage)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert files == ["bundle.yaml", "fold_0/model.safetensors", "fold_1/model.safetensors"]
        assert read_meta(out)["weights_storage"] == storage and read_meta(out)["folds"] == [0, 1]
        got = Predictor.from_bundle(out).predict_volume(vol, probabilities=True).probabilities
        np.testing.assert_allclose(got, want, atol=atol)
        assert float(np.abs(got - want).mean()) < atol / 10
    with pytest.raises(InputError, match="already exists"):
        export_bundle(tmp_path / "run", tmp_path / "exp_int8")
    assert not list(tmp_path.glob(".*partial"))


def test_building_a_bundle_model_does_not_import_the_compiler():
    """The size probe on torch's meta device skips weight initialisation: drawing meta "random" values
    imported torch._dynamo, 1.6 s of every ``medseg predict`` start-up. In a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys; from medseg.bundle import build_model; "
            "m = build_model({'model': {'name': 'unet', 'kwargs': {'spatial_dims': 3, 'in_channels': 1, "
            "'out_channels': 3, 'features': [8, 16]}}}); "
            "print(sum(p.numel() for p in m.parameters()) > 0, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False"]
