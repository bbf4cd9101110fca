"""Model bundles: round trip, wrong architecture, damaged files, no pickled code executed."""

from __future__ import annotations

import pickle

import pytest
import torch

from medseg.bundle import load_bundle, load_weights, save_weights, write_meta
from medseg.errors import InputError
from medseg.training.checkpoint import STATE_FILE, load_checkpoint
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
