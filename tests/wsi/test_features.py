"""Tile encoders, weights files and feature extraction (resumable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.errors import InputError
from medseg.models.encoders import ENCODER_NAMES, create_encoder, load_weights, save_weights


@pytest.mark.parametrize("name", ["tile_resnet_tiny", "tile_resnet18", "monai_resnet18"])
def test_encoders_forward_backward(name):
    enc = create_encoder(name)
    x = torch.randn(2, 3, 32, 32)
    f = enc(x)
    assert f.shape == (2, enc.feature_dim)
    f.sum().backward()


def test_resnet18_parameter_count_matches_torchvision_layout():
    # torchvision resnet18 has 11,689,512 parameters, 513,000 of them in the 1000-class fc layer
    enc = create_encoder("tile_resnet18")
    assert sum(p.numel() for p in enc.parameters()) == 11_689_512 - 513_000
    assert set(ENCODER_NAMES) >= {"tile_resnet18", "monai_resnet18"}


def test_weights_roundtrip_and_errors(tmp_path):
    a, b = create_encoder("tile_resnet_tiny"), create_encoder("tile_resnet_tiny")
    save_weights(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    a.eval(); b.eval()
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    create_encoder("tile_resnet_tiny", weights=tmp_path / "w.pt")
    with pytest.raises(InputError, match="do not fit"):
        create_encoder("tile_resnet_small", weights=tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(InputError, match="cannot read"):
        create_encoder("tile_resnet_tiny", weights=tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="unknown tile encoder"):
        create_encoder("unet")


def test_features_match_direct_encoding_and_resume(tmp_path, rng):
    from medseg.io.wsi import open_slide
    from medseg.wsi.features import EncoderSpec, extract_features_batch, load_features, normalise
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    img = np.full((256, 256, 3), 240, np.uint8)
    img[32:224, 32:224] = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8) // 2 + (100, 0, 60)
    Image.fromarray(img).save(tmp_path / "s.png")
    tile_slides([tmp_path / "s.png"], tmp_path / "tiles",
                TilingParams(mpp=2.0, tile_size=32, slide_mpp=1.0, mask_mpp=8.0))
    spec = EncoderSpec(name="tile_resnet_tiny")
    torch.manual_seed(0)
    enc_w = tmp_path / "enc.safetensors"
    save_weights(create_encoder("tile_resnet_tiny"), enc_w)
    spec.weights = str(enc_w)
    rows = extract_features_batch(tmp_path / "tiles", tmp_path / "feats", spec, device=torch.device("cpu"),
                                  batch_size=4, workers=0, slide_mpp=1.0)
    assert rows[0]["status"] == "ok" and rows[0]["n_tiles"] > 4
    feats, coords, meta = load_features(tmp_path / "feats" / "s" / "features.h5")
    assert feats.shape == (rows[0]["n_tiles"], 64) and meta["encoder"] == "tile_resnet_tiny"
    # recompute one tile by hand: read 64 px at 1 um/px, 2x2 box-average to 32 px, normalise, encode
    x, y = coords[3]
    s = open_slide(tmp_path / "s.png", mpp=1.0)
    tile = img[y:y + 64, x:x + 64].astype(np.float64).reshape(32, 2, 32, 2, 3).mean((1, 3))
    np.testing.assert_allclose(s.read_mpp((int(x), int(y)), (32, 32), mpp=2.0), tile, atol=1)
    enc = spec.build(torch.device("cpu"))
    t = torch.from_numpy(np.array(s.read_mpp((int(x), int(y)), (32, 32), mpp=2.0))).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = enc(normalise(t, spec.mean, spec.std))[0].numpy()
    np.testing.assert_allclose(feats[3], ref, rtol=1e-4, atol=1e-5)
    again = extract_features_batch(tmp_path / "tiles", tmp_path / "feats", spec, device=torch.device("cpu"),
                                   batch_size=4, workers=0, slide_mpp=1.0)
    assert again[0]["status"] == "skipped"


def test_features_on_openvino_equal_pytorch_and_cli_backend_errors(tmp_path, rng, monkeypatch):
    """``prepare=on_backend(openvino)``: the encoder converted once per tile size (cached in
    MEDSEG_CACHE_DIR) gives PyTorch's features to float32 rounding; asking for OpenVINO where it is not
    installed is a usage error naming the extra."""
    from functools import partial

    from medseg.cli.main import main
    from medseg.inference.backends import PerShapeModel, on_backend, openvino_status
    from medseg.wsi.features import EncoderSpec, extract_features_batch, load_features
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    img = np.full((256, 256, 3), 240, np.uint8)
    img[32:224, 32:224] = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8) // 2 + (100, 0, 60)
    Image.fromarray(img).save(tmp_path / "s.png")
    tile_slides([tmp_path / "s.png"], tmp_path / "tiles",
                TilingParams(mpp=2.0, tile_size=32, slide_mpp=1.0, mask_mpp=8.0))
    torch.manual_seed(0)
    save_weights(create_encoder("tile_resnet_tiny"), tmp_path / "enc.safetensors")
    spec = EncoderSpec(name="tile_resnet_tiny", weights=str(tmp_path / "enc.safetensors"))
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    if openvino_status() is not None:
        rc = main(["wsi", "features", "--tiles", str(tmp_path / "tiles"), "--output", str(tmp_path / "f"),
                   "--weights", str(tmp_path / "enc.safetensors"), "--encoder", "tile_resnet_tiny",
                   "--backend", "openvino", "--workers", "0"])
        assert rc == 2 and not (tmp_path / "f" / "s").exists()
        pytest.skip(f"OpenVINO {openvino_status()}")
    assert isinstance(on_backend(spec.build(torch.device("cpu")), "openvino", batch=4), PerShapeModel)
    args = dict(device=torch.device("cpu"), batch_size=4, workers=0, slide_mpp=1.0)
    extract_features_batch(tmp_path / "tiles", tmp_path / "pt", spec, **args)
    extract_features_batch(tmp_path / "tiles", tmp_path / "ov", spec, **args,
                           prepare=partial(on_backend, backend="openvino", batch=4))
    a, _, _ = load_features(tmp_path / "pt" / "s" / "features.h5")
    b, _, _ = load_features(tmp_path / "ov" / "s" / "features.h5")
    assert a.shape == b.shape and a.shape[0] > 4
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert any((tmp_path / "cache").rglob("*.xml"))     # converted once, cached


def test_wsi_features_stage_on_openvino_equals_pytorch(tmp_path, rng, monkeypatch):
    """The ``wsi_features`` pipeline stage with ``backend: openvino`` writes PyTorch's features to float32
    rounding (same encoder weights); an unknown backend fails before any slide."""
    from medseg.errors import ConfigError
    from medseg.inference.backends import openvino_status
    from medseg.stages.base import Context
    from medseg.stages.wsi import stage_features, stage_tile
    from medseg.wsi.features import load_features

    img = np.full((256, 256, 3), 240, np.uint8)
    img[32:224, 32:224] = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8) // 2 + (100, 0, 60)
    Image.fromarray(img).save(tmp_path / "s.png")
    torch.manual_seed(0)
    save_weights(create_encoder("tile_resnet_tiny"), tmp_path / "enc.safetensors")
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    feats = {}
    for backend in ("torch", "openvino", "nope"):
        ctx = Context(output_dir=tmp_path / backend, config={}, base_dir=tmp_path, stage_name="wsi_features")
        stage_tile(ctx, slides=str(tmp_path / "s.png"), mpp=2.0, tile_size=32, slide_mpp=1.0, mask_mpp=8.0)
        kw = dict(encoder="tile_resnet_tiny", weights=str(tmp_path / "enc.safetensors"), batch_size=4, workers=0,
                  device="cpu", backend=backend)
        if backend == "nope" or (backend == "openvino" and openvino_status() is not None):
            with pytest.raises(ConfigError):
                stage_features(ctx, **kw)
            assert not (tmp_path / backend / "features" / "s").exists()
            continue
        stage_features(ctx, **kw)
        feats[backend] = load_features(tmp_path / backend / "features" / "s" / "features.h5")[0]
    if "openvino" not in feats:
        pytest.skip(f"OpenVINO {openvino_status()}")
    assert feats["torch"].shape == feats["openvino"].shape and len(feats["torch"]) > 4
    np.testing.assert_allclose(feats["openvino"], feats["torch"], rtol=1e-4, atol=1e-5)
