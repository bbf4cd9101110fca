"""Patch sampling, the epoch sample stream and augmentation functions."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.training.augment import crop_patch, intensity_augment, random_flip, rotation_matrix, warped_patch
from medseg.training.config import DEFAULTS
from medseg.training.sampling import EpochSampler, PatchDataset, TrainCase, choose_centre


def _case(shape=(10, 12, 14), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1, *shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[2, 3, 4] = 1
    lab[7, 8, 9:11] = 2
    return TrainCase("c", img, lab, num_classes=3)


def test_crop_patch_pads_outside_with_zero():
    img = np.arange(1, 28, dtype=np.float32).reshape(1, 3, 3, 3)
    lab = np.ones((3, 3, 3), np.uint8)
    x, y = crop_patch(img, lab, centre=(0, 0, 0), patch=(2, 2, 2))    # start (-1, -1, -1)
    assert x[0, 0].tolist() == [[0, 0], [0, 0]] and x[0, 1].tolist() == [[0, 0], [0, 1]]
    assert y.sum() == 1 and y[1, 1, 1] == 1


def test_forced_foreground_centre_is_foreground():
    case = _case()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        c = choose_centre(case, (4, 4, 4), force_fg=True, rng=rng)
        seen.add(int(case.label[tuple(c)]))
    assert seen == {1, 2}                 # a random class each time, both get picked


def test_random_centre_keeps_patch_inside():
    case = _case()
    rng = np.random.default_rng(1)
    for _ in range(200):
        c = choose_centre(case, (4, 6, 8), force_fg=False, rng=rng)
        start = c - np.array([2, 3, 4])
        assert np.all(start >= 0) and np.all(start + [4, 6, 8] <= case.label.shape)


def test_foreground_fraction_is_respected():
    case = _case(shape=(30, 30, 30))
    aug = dict(DEFAULTS["augment"], p_spatial=0.0, flip=False, p_gamma=0, p_noise=0, p_blur=0, p_contrast=0,
               p_brightness=0)
    ds = PatchDataset([case], patch=(3, 3, 3), augment=aug, seed=0, foreground_fraction=0.5)
    hits = sum(int(ds.sample(k)[1][1, 1, 1] > 0) for k in range(400))
    # forced patches are centred on foreground (about 200); random ones almost never are (3 / 27000 voxels)
    assert 160 <= hits <= 240


def test_samples_are_a_function_of_their_index():
    ds = PatchDataset([_case(), _case(seed=1)], patch=(8, 8, 8), augment=dict(DEFAULTS["augment"], p_spatial=1.0),
                      seed=5, foreground_fraction=0.3)
    a = [ds[k] for k in (3, 4, 3)]
    assert np.array_equal(a[0][0], a[2][0]) and np.array_equal(a[0][1], a[2][1])
    assert not np.array_equal(a[0][0], a[1][0])
    assert a[0][0].shape == (1, 8, 8, 8) and a[0][1].dtype.is_floating_point is False


def test_epoch_sampler_shards_without_overlap():
    idx = {r: [] for r in range(2)}
    for r in range(2):
        s = EpochSampler(iters_per_epoch=3, batch_size=2, rank=r, world_size=2)
        for e in range(2):
            s.set_epoch(e)
            idx[r] += list(s)
    assert idx[0][:4] == [0, 1, 4, 5] and idx[1][:2] == [2, 3]
    assert sorted(idx[0] + idx[1]) == list(range(24))
    single = EpochSampler(iters_per_epoch=3, batch_size=2)
    single.set_epoch(1)
    assert list(single) == list(range(6, 12))


def test_warp_identity_equals_crop():
    case = _case()
    x1, y1 = crop_patch(case.image, case.label, centre=(5, 6, 7), patch=(6, 8, 10))
    x2, y2 = warped_patch(case.image, case.label, centre=(5, 6, 7), patch=(6, 8, 10), matrix=np.eye(3))
    np.testing.assert_allclose(x1, x2, atol=1e-6)
    assert np.array_equal(y1, y2)


def test_warp_quarter_turn_equals_rot90():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(1, 5, 5, 5)).astype(np.float32)
    lab = (img[0] > 0).astype(np.uint8)
    m = rotation_matrix([np.pi / 2, 0, 0])       # about axis 0: (y, x) offsets rotate by 90 degrees
    x, y = warped_patch(img, lab, centre=(2, 2, 2), patch=(5, 5, 5), matrix=m)
    # output[o] = input[centre + m @ (o - 2)]; with m mapping (dy, dx) -> (-dx, dy)
    expect = np.empty_like(img)
    for z in range(5):
        for yy in range(5):
            for xx in range(5):
                expect[0, z, yy, xx] = img[0, z, 2 - (xx - 2), 2 + (yy - 2)]
    np.testing.assert_allclose(x, expect, atol=1e-5)
    assert np.array_equal(y, (expect[0] > 0).astype(np.uint8))


def test_flip_keeps_image_and_label_aligned():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    lab = (img[0] > 0.5).astype(np.uint8)
    for seed in range(8):
        x, y = random_flip(img, lab, rng=np.random.default_rng(seed))
        assert np.array_equal(y, (x[0] > 0.5).astype(np.uint8))
        assert sorted(x.ravel().tolist()) == sorted(img.ravel().tolist())


def test_intensity_augment_gamma_keeps_moments():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(1, 8, 8, 8)).astype(np.float32)
    cfg = dict(DEFAULTS["augment"], p_gamma=1.0, gamma=[1.5, 1.5], p_noise=0, p_blur=0, p_contrast=0, p_brightness=0)
    out = intensity_augment(img, cfg=cfg, rng=np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.mean() == pytest.approx(img.mean(), abs=1e-4) and out.std() == pytest.approx(img.std(), rel=1e-4)
    assert not np.allclose(out, img)
    # the order of voxels by intensity is kept (gamma is monotonic)
    assert np.array_equal(np.argsort(out.ravel()), np.argsort(img.ravel()))
