"""The numpy path around networks that take numpy arrays (medseg.inference.numpy_path) against the torch path
(sliding_window, mirror_tta, the predictor's fold mean) with the very same network: the numpy one is handed
the torch module behind a numpy adapter, so any difference is the window code's, not a backend's. Both add
the same float32 window outputs in the same order; they differ only by float32 rounding (a fused multiply-add
in torch, a product then a sum here; two softmax implementations): 1e-5 on probabilities in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from medseg.inference.numpy_path import probabilities_np, sliding_window_np, softmax_, takes_numpy
from medseg.inference.predictor import Predictor
from medseg.inference.sliding_window import sliding_window
from medseg.volume import Volume
from tests.inference.helpers import blob_image, make_bundle

TOL = 1e-5


class NumpyNet:
    """A torch module as a numpy model (float32 arrays in and out), as an OpenVINO runner is one."""

    takes_numpy = True

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous
        self.calls.append(x.shape[0])
        with torch.no_grad():
            return self.net(torch.from_numpy(x.copy())).numpy()


def _conv(dims: int, seed: int = 0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1) if dims == 3 else torch.nn.Conv2d(2, 3, 3, padding=1)
    return conv.eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror", [(), (0, 2)])
def test_3d_windows_padding_and_a_short_last_batch_match_torch(blend, mirror):
    net = _conv(3)
    x = torch.randn(2, 2, 13, 30, 21, generator=torch.Generator().manual_seed(1))   # two cases; axis 0 padded
    kw = dict(overlap=0.5, batch_size=5, blend=blend, mirror_axes=mirror)
    ref = sliding_window(net, x, (16, 12, 10), **kw)
    model = NumpyNet(net)
    got = sliding_window_np(model, x.numpy(), (16, 12, 10), **kw)
    assert got.shape == tuple(ref.shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)
    assert max(model.calls) == 5 and min(model.calls) < 5          # full batches, then a shorter one


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_2d_slice_by_slice_matches_torch(axis):
    net = _conv(2, seed=3)
    x = torch.randn(1, 2, 9, 14, 11, generator=torch.Generator().manual_seed(4))
    roi = (8, 8)
    ref = sliding_window(net, x, roi, overlap=0.25, batch_size=3, axis=axis, mirror_axes=(0, 1, 2))
    got = sliding_window_np(NumpyNet(net), x.numpy(), roi, overlap=0.25, batch_size=3, axis=axis,
                            mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)


def test_softmax_in_place_by_slabs_is_scipys():
    a = np.random.default_rng(0).normal(0, 30, (2, 4, 7, 5, 3)).astype(np.float32)   # large logits: no overflow
    want = scipy.special.softmax(a.astype(np.float64), axis=1)
    got = a.copy()
    assert softmax_(got, chunk_voxels=50) is not None
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(softmax_(a.copy()), got, atol=1e-7, rtol=0)      # slab size changes nothing


def test_a_model_of_the_wrong_output_is_refused():
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match="must return"):
        sliding_window_np(lambda a: a[:, :, :-1], np.zeros((1, 1, 8, 8, 8), np.float32), (8, 8, 8))


@pytest.mark.parametrize("tta_mode", ["volume", "window"])
def test_the_predictor_takes_the_numpy_path_with_tta_and_folds(tmp_path, tta_mode):
    """A predictor whose runners take numpy (OpenVINO's) predicts through this module: with TTA (both modes)
    and two folds it gives the torch path's probabilities with the same networks."""
    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16), seed=2)
    vol = Volume(blob_image((20, 26, 18), seed=5), spacing_mm=(1.0, 1.0, 1.0))
    kw = dict(tta_axes=(0, 1, 2), tta_mode=tta_mode, batch_size=3, postprocess=False)
    ref_p = Predictor.from_bundle(bundle, backend="torch", **kw)
    ref_p.models = ref_p._runners = [ref_p.models[0], make_bundle_net(tmp_path / "c")]    # a 2-fold ensemble
    ref = ref_p.predict_volume(vol, probabilities=True)
    p = Predictor.from_bundle(bundle, backend="torch", **kw)
    p.models = p._runners = [NumpyNet(m) for m in ref_p.models]
    assert takes_numpy(p.runners())
    got = p.predict_volume(vol, probabilities=True)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got.label.array, ref.label.array)
    assert sum(p.runners()[0].calls) == sum(p.runners()[1].calls) > 0


def make_bundle_net(root):
    from medseg.bundle import load_models

    return load_models(make_bundle(root, patch=(16, 16, 16), seed=9))[0][0]


def test_probabilities_np_of_one_model_is_the_softmax_of_its_window():
    net = _conv(3, seed=6)
    img = np.random.default_rng(2).normal(size=(2, 10, 10, 10)).astype(np.float32)
    got = probabilities_np([NumpyNet(net)], img, (10, 10, 10), overlap=0.5, batch_size=1, blend="gaussian",
                           axis=0, tta_axes=(), tta_mode="volume")
    with torch.no_grad():      # one window covering the volume: the blend divides the weights out again
        want = torch.softmax(net(torch.from_numpy(img)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
