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
