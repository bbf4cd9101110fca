"""Tile encoders users bring: ResNet-50 truncated after layer3 (torchvision names) and ViT-S/16,
ViT-B/16 (timm names). The published layouts are written out here by hand (names and shapes of
torchvision's resnet50 and timm's vit_*_patch16_224 state dicts), not taken from our modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import InputError
from medseg.models.encoders import create_encoder, load_checkpoint


def torchvision_resnet50_layout(num_batches_tracked: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of torchvision ``resnet50().state_dict()`` with its shape (fc: 1000 classes)."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        out.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                    f"{name}.running_var": (c,)})
        if num_batches_tracked:
            out[f"{name}.num_batches_tracked"] = ()

    out["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for li, (n, w) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            out[f"{p}.conv1.weight"] = (w, cin, 1, 1)
            bn(f"{p}.bn1", w)
            out[f"{p}.conv2.weight"] = (w, w, 3, 3)
            bn(f"{p}.bn2", w)
            out[f"{p}.conv3.weight"] = (4 * w, w, 1, 1)
            bn(f"{p}.bn3", 4 * w)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (4 * w, cin, 1, 1)
                bn(f"{p}.downsample.1", 4 * w)
            cin = 4 * w
    out["fc.weight"], out["fc.bias"] = (1000, 2048), (1000,)
    return out


def timm_vit_layout(dim: int, depth: int = 12, head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of timm ``vit_*_patch16_224().state_dict()`` (224 px, 16-px patches, MLP ratio 4)."""
    out: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim), "pos_embed": (1, 197, dim),
                                       "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}"
        out.update({f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                    f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                    f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                    f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                    f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                    f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})
    out["norm.weight"], out["norm.bias"] = (dim,), (dim,)
    if head:
        out["head.weight"], out["head.bias"] = (1000, dim), (1000,)
    return out


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                else torch.rand(s, generator=g) + 0.5) for k, s in layout.items()}


def test_parameter_counts():
    # Worked out by hand from the layouts (bottleneck convolutions + batch norms; ViT patch embedding,
    # tokens, 12 blocks, final norm): ResNet-50 to layer3 has 8,543,296 parameters (CLAM's resnet50_trunc),
    # ViT-S/16 22,050,664 and ViT-B/16 86,567,656 with their 1000-class heads (385,000 / 769,000).
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in create_encoder(n).parameters())
                  for n in ("resnet50_trunc", "vit_small_patch16", "vit_base_patch16")}
    assert counts == {"resnet50_trunc": 8_543_296, "vit_small_patch16": 22_050_664 - 385_000,
                      "vit_base_patch16": 86_567_656 - 769_000}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_resnet50_checkpoint_loads_every_parameter(tmp_path, suffix):
    sd = random_state(torchvision_resnet50_layout())
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"module.{k}": v for k, v in sd.items()}, str(path))  # a DataParallel prefix
    else:
        torch.save({"state_dict": sd, "epoch": 90}, path)
    enc = create_encoder("resnet50_trunc")
    rep = load_checkpoint(enc, path)
    assert rep["ignored"] == sorted(k for k in sd if k.startswith(("layer4.", "fc.")))
    own = enc.state_dict()
    assert rep["loaded"] == len(own) == len(sd) - len(rep["ignored"])
    for k, v in own.items():  # every parameter and buffer holds the file's value
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


def test_old_torchvision_file_without_num_batches_tracked(tmp_path):
    sd = random_state(torchvision_resnet50_layout(num_batches_tracked=False))
    torch.save(sd, tmp_path / "old.pth")
    enc = create_encoder("resnet50_trunc")
    rep = load_checkpoint(enc, tmp_path / "old.pth")
    assert rep["loaded"] == sum(1 for k in enc.state_dict() if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("name,dim,head", [("vit_small_patch16", 384, True), ("vit_small_patch16", 384, False)])
def test_timm_vit_checkpoint_loads_every_parameter(tmp_path, name, dim, head):
    sd = random_state(timm_vit_layout(dim, head=head), seed=1)
    torch.save({"model": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "vit.pth")
    enc = create_encoder(name)
    rep = load_checkpoint(enc, tmp_path / "vit.pth")
    assert rep["ignored"] == (["head.bias", "head.weight"] if head else [])
    own = enc.state_dict()
    assert set(own) == set(sd) - {"head.weight", "head.bias"} and rep["loaded"] == len(own)
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


def test_vit_base_layout_matches():
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in create_encoder("vit_base_patch16").state_dict().items()}
    assert own == timm_vit_layout(768, head=False)


def test_checkpoint_errors_name_the_keys(tmp_path):
    sd = random_state(torchvision_resnet50_layout())
    del sd["layer3.5.conv3.weight"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(InputError, match=r"1 missing key\(s\) e.g. layer3.5.conv3.weight; "
                                         r"1 unexpected key\(s\) e.g. extra"):
        load_checkpoint(create_encoder("resnet50_trunc"), tmp_path / "bad.pth")
    vit = random_state(timm_vit_layout(384, head=False))
    torch.save(vit, tmp_path / "vits.pth")
    with pytest.raises(InputError, match=r"150 shape mismatch\(es\) e.g. "
                                         r"blocks.0.attn.proj.bias: file \(384,\) vs model \(768,\)"):
        load_checkpoint(create_encoder("vit_base_patch16"), tmp_path / "vits.pth")


def test_forward_shapes_and_vit_position_interpolation():
    torch.manual_seed(0)
    r = create_encoder("resnet50_trunc").eval()
    with torch.no_grad():
        assert r(torch.zeros(2, 3, 64, 64)).shape == (2, 1024)
    v = create_encoder("vit_small_patch16").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        f224 = v(x)
        assert f224.shape == (1, 384) and v(torch.randn(2, 3, 256, 256)).shape == (2, 384)
    # at the native 14 x 14 grid the embeddings are used as they are
    torch.testing.assert_close(v._pos(14, 14), v.pos_embed)
    with pytest.raises(ValueError, match="multiple of the 16-px patch"):
        v(torch.zeros(1, 3, 40, 40))


def test_vit_block_by_hand():
    """One block of a width-4, one-head ViT on a 2-token sequence, against numpy."""
    from medseg.models.vit import _Block

    torch.manual_seed(0)
    blk = _Block(4, 1, 2.0).eval()
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        got = blk(x)[0].numpy()
    p = {k: v.detach().double().numpy() for k, v in blk.state_dict().items()}
    a = x[0].double().numpy()

    def ln(z, w, b):
        m, s = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        return (z - m) / np.sqrt(s + 1e-6) * w + b

    h = ln(a, p["norm1.weight"], p["norm1.bias"])
    qkv = h @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    q, k, v = qkv[:, :4], qkv[:, 4:8], qkv[:, 8:]
    s = q @ k.T / 2.0
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    a = a + (w @ v) @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    from scipy.special import erf

    u = ln(a, p["norm2.weight"], p["norm2.bias"]) @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]
    u = 0.5 * u * (1 + erf(u / np.sqrt(2)))
    a = a + u @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    np.testing.assert_allclose(got, a, rtol=1e-5, atol=1e-5)


def test_cli_needs_weights_or_seeded_random_encoder(tmp_path, rng):
    from PIL import Image

    from medseg.cli.main import main
    from medseg.wsi.features import load_features
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    img = np.full((256, 256, 3), 240, np.uint8)
    img[32:224, 32:224] = rng.integers(0, 255, (192, 192, 3)).astype(np.uint8) // 2 + (100, 0, 60)
    Image.fromarray(img).save(tmp_path / "s.png")
    tile_slides([tmp_path / "s.png"], tmp_path / "tiles", TilingParams(mpp=2.0, tile_size=32, slide_mpp=1.0,
                                                                       mask_mpp=8.0))
    base = ["wsi", "features", "--tiles", str(tmp_path / "tiles"), "--out", str(tmp_path / "f"), "--encoder",
            "tile_resnet_tiny", "--workers", "0", "--device", "cpu", "--slide-mpp", "1.0"]
    assert main(base) == 2  # no weights, no --random-encoder
    assert main(base + ["--random-encoder"]) == 2  # no seed
    assert not (tmp_path / "f").exists()
    assert main(base + ["--random-encoder", "--seed", "3"]) == 0
    feats, _, meta = load_features(tmp_path / "f" / "s" / "features.h5")
    assert meta["encoder_random_seed"] == 3 and meta["encoder_weights"] is None
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406] and meta["normalisation"]["std"] == [0.229, 0.224,
                                                                                                       0.225]
    assert main(base + ["--random-encoder", "--seed", "3"]) == 0  # resumed: same seed, skipped, same file
    np.testing.assert_array_equal(load_features(tmp_path / "f" / "s" / "features.h5")[0], feats)
    assert main(base + ["--random-encoder", "--seed", "4"]) == 1  # another encoder: refused, file kept
    np.testing.assert_array_equal(load_features(tmp_path / "f" / "s" / "features.h5")[0], feats)
    assert main(base + ["--random-encoder", "--seed", "4", "--out", str(tmp_path / "g")]) == 0
    assert not np.allclose(load_features(tmp_path / "g" / "s" / "features.h5")[0], feats)


def test_features_metadata_records_input_size_and_mpp():
    from medseg.wsi.features import EncoderSpec

    d = EncoderSpec(name="resnet50_trunc", seed=0).describe()
    assert (d["encoder_input_size"], d["encoder_mpp"], d["encoder_random_seed"]) == (224, 0.5, 0)
    assert EncoderSpec(name="vit_base_patch16", weights="/x/dino_vitb16.pth").describe()["encoder_weights"] == \
        "dino_vitb16.pth"
    assert EncoderSpec(name="t", seed=1).fingerprint() != EncoderSpec(name="t", seed=2).fingerprint()
