"""Sliding-window inference against MONAI's sliding_window_inference and hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import ConfigError, MedsegError
from medseg.inference import sliding_window
from medseg.inference.windows import importance_map, normaliser, pad_amounts, window_grid, window_starts

monai_utils = pytest.importorskip("monai.inferers.utils")


def _net3d(out_ch=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, out_ch, 3, padding=1))
    return net.eval()


def _monai(net, x, roi, overlap, bs, mode):
    with torch.inference_mode():
        return monai_utils.sliding_window_inference(x, roi, bs, net, overlap=overlap, mode=mode, sigma_scale=0.125)


def test_window_starts_by_hand():
    assert window_starts(160, 64, 0.5) == [0, 32, 64, 96]
    assert window_starts(100, 64, 0.5) == [0, 32, 36]  # last window flush with the end
    assert window_starts(64, 64, 0.9) == [0]
    assert window_starts(10, 4, 0.0) == [0, 4, 6]
    assert window_starts(5, 4, 0.99) == [0, 1]  # step never below 1
    with pytest.raises(ConfigError):
        window_starts(3, 4, 0.5)
    assert len(window_grid((160, 100, 64), (64, 64, 64), (0.5, 0.5, 0.5))) == 4 * 3 * 1
    assert pad_amounts((10, 20, 7), (16, 16, 16)) == [(3, 3), (0, 0), (4, 5)]


def test_importance_map_by_hand():
    w = importance_map((4,))  # x = -1.5, -0.5, 0.5, 1.5; sigma = 0.5 -> exp(-2 x^2)
    expected = torch.tensor([math.exp(-4.5), math.exp(-0.5), math.exp(-0.5), math.exp(-4.5)])
    torch.testing.assert_close(w, expected)
    w3 = importance_map((16, 16, 16))  # corner product 0.0022**3 is floored at 1e-3
    assert float(w3.min()) == pytest.approx(1e-3)
    assert float(w3[8, 8, 8]) == pytest.approx(math.exp(-3 * 0.5**2 / 8), rel=1e-6)
    assert torch.equal(importance_map((5, 6), blend="constant"), torch.ones(5, 6))
    with pytest.raises(ConfigError):
        importance_map((4,), blend="median")


def test_normaliser_counts_windows_for_constant_blend():
    # 10 voxels, windows of 4 at [0, 4, 6]: voxels 6 and 7 lie in two windows
    n = normaliser((10,), (4,), (0.0,), blend="constant")
    assert n.tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 1, 1]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape,roi,overlap,bs",
    [((1, 1, 37, 45, 29), (16, 16, 16), 0.5, 3),
     ((2, 1, 24, 40, 33), (16, 20, 12), (0.25, 0.5, 0.6), 4),
     ((2, 1, 10, 20, 7), (16, 16, 16), 0.5, 2)],  # smaller than the window on two axes
)
def test_matches_monai(shape, roi, overlap, bs, mode):
    net = _net3d()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours = sliding_window(net, x, roi, overlap=overlap, batch_size=bs, blend=mode)
    ref = _monai(net, x, roi, overlap, bs, mode)
    assert ours.shape == ref.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(ours, ref.as_tensor() if hasattr(ref, "as_tensor") else ref, atol=1e-5, rtol=1e-5)


def test_pointwise_model_is_reproduced_exactly():
    """Blending weights sum to one everywhere, so a voxel-wise model gives its own output."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 1).eval()
    x = torch.randn(1, 2, 30, 23, 41)
    with torch.inference_mode():
        direct = net(x)
    for blend in ("gaussian", "constant"):
        out = sliding_window(net, x, (16, 8, 16), overlap=0.5, batch_size=5, blend=blend)
        torch.testing.assert_close(out, direct, atol=1e-6, rtol=1e-5)


def test_repeated_calls_identical_and_cache_untouched():
    net = _net3d()
    x = torch.randn(1, 1, 20, 20, 20)
    a = sliding_window(net, x, 12)
    b = sliding_window(net, x, 12)
    assert torch.equal(a, b)


@pytest.mark.parametrize("axis", [0, 2])
def test_slicewise_2d_model(axis):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(4, 2, 3, padding=1)).eval()
    x = torch.randn(1, 1, 6, 21, 18)
    out = sliding_window(net, x, (16, 16), overlap=0.5, batch_size=3, axis=axis)
    assert out.shape == (1, 2, 6, 21, 18)
    for k in range(x.shape[2 + axis]):
        sl = x.select(2 + axis, k)  # (1, 1, a, b)
        ref = _monai(net, sl, (16, 16), 0.5, 1, "gaussian")
        torch.testing.assert_close(out.select(2 + axis, k), torch.as_tensor(ref), atol=1e-5, rtol=1e-5)


class _OOMOnBigBatch(torch.nn.Module):
    def __init__(self, net, max_batch, exc=torch.OutOfMemoryError):
        super().__init__()
        self.net, self.max_batch, self.exc, self.sizes = net, max_batch, exc, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.max_batch:
            raise self.exc("simulated: CUDA out of memory")
        return self.net(x)


def test_oom_fallback_gives_identical_result():
    net = _net3d()
    x = torch.randn(1, 1, 30, 30, 30)
    ref = sliding_window(net, x, 16, batch_size=2)
    flaky = _OOMOnBigBatch(net, max_batch=2).eval()
    out = sliding_window(flaky, x, 16, batch_size=8)
    assert flaky.sizes[:3] == [8, 4, 2]  # halved until it fits
    assert max(flaky.sizes[3:]) <= 2
    assert torch.equal(out, ref)
    torch.testing.assert_close(out, sliding_window(net, x, 16, batch_size=8), atol=1e-6, rtol=1e-6)


def test_other_runtime_errors_propagate():
    flaky = _OOMOnBigBatch(_net3d(), max_batch=1, exc=RuntimeError).eval()
    with pytest.raises(RuntimeError, match="simulated"):
        sliding_window(flaky, torch.zeros(1, 1, 20, 20, 20), 16, batch_size=4)
    assert flaky.sizes == [4]  # no retry


def test_oom_with_single_window_on_cpu_propagates():
    flaky = _OOMOnBigBatch(_net3d(), max_batch=0).eval()
    with pytest.raises(torch.OutOfMemoryError):
        sliding_window(flaky, torch.zeros(1, 1, 20, 20, 20), 16, batch_size=2)


def test_bad_arguments():
    net = _net3d()
    x = torch.zeros(1, 1, 20, 20, 20)
    with pytest.raises(ConfigError, match="roi_size"):
        sliding_window(net, x, (16,))
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(net, x, 16, overlap=1.0)
    with pytest.raises(ConfigError):
        sliding_window(net, x.numpy(), 16)
    with pytest.raises(MedsegError, match="spatial size"):
        sliding_window(torch.nn.Conv3d(1, 1, 3, stride=2, padding=1), x, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compute_cpu_accumulation_matches():
    net = _net3d().cuda()
    x = torch.randn(1, 1, 40, 40, 40)
    a = sliding_window(net, x, 32, amp=False)
    b = sliding_window(net, x, 32, amp=False, output_device="cpu")
    assert a.device.type == "cuda" and b.device.type == "cpu"
    torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)
    c = sliding_window(net, x.cuda(), 32, amp=True, output_device="cpu")
    assert (c.argmax(1) == b.argmax(1)).float().mean() > 0.99


def test_large_normaliser_not_cached_same_result(monkeypatch):
    import medseg.inference.windows as win

    net = _net3d()
    x = torch.randn(1, 1, 20, 22, 18)
    cached = sliding_window(net, x, 12, overlap=0.25)
    monkeypatch.setattr(win, "_CACHE_MAX_VOXELS", 0)
    assert torch.equal(sliding_window(net, x, 12, overlap=0.25, output_device="cpu"), cached)


class _OOMFirstCalls(torch.nn.Module):
    def __init__(self, net, n_fail):
        super().__init__()
        self.net, self.n_fail, self.sizes = net, n_fail, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if len(self.sizes) <= self.n_fail:
            raise torch.OutOfMemoryError("simulated: out of memory")
        return self.net(x)


def test_oom_at_one_window_moves_accumulation_to_cpu():
    """The 'meta' device stands in for a GPU accumulator here (no CUDA on CI)."""
    net = _net3d()
    x = torch.randn(1, 1, 24, 24, 24)
    ref = sliding_window(net, x, 16, batch_size=1)
    flaky = _OOMFirstCalls(net, n_fail=2).eval()
    out = sliding_window(flaky, x, 16, batch_size=2, device="cpu", output_device="meta")
    assert flaky.sizes[:3] == [2, 1, 1]  # halved, still failing, then accumulated on the CPU
    assert out.device.type == "cpu"
    assert torch.equal(out, ref)


def test_result_is_an_ordinary_tensor():
    out = sliding_window(_net3d(), torch.zeros(1, 1, 20, 20, 20), 16)
    assert not out.requires_grad and not out.is_inference()
    out[:, 0] = 0  # in-place use by the caller is allowed


def test_count_windows_matches_the_windows_sliding_window_runs():
    import torch

    from medseg.inference.sliding_window import sliding_window
    from medseg.inference.windows import count_windows

    seen = []

    def model(x):
        seen.append(x.shape[0])
        return torch.zeros((x.shape[0], 2, *x.shape[2:]))

    for shape, roi in [((40, 50, 30), (16, 16, 16)), ((10, 70, 20), (32, 32, 32)), ((5, 40, 40), (16, 16))]:
        seen.clear()
        sliding_window(model, torch.zeros((1, 1, *shape)), roi, overlap=0.5, batch_size=3)
        assert sum(seen) == count_windows(shape, roi, 0.5)
    # by hand: 40 -> starts 0, 8, 16, 24 (4); 50 -> 0, 8, ..., 32, 34 (6); 30 -> 0, 8, 14 (3)
    assert count_windows((40, 50, 30), (16, 16, 16), 0.5) == 4 * 6 * 3


@pytest.mark.parametrize("slab", [1, 3, 7, None, 100])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_normaliser_slab_by_slab_is_bitwise_the_whole_map(monkeypatch, slab, blend):
    """Dividing by the normaliser built one slab at a time (large volumes) gives exactly acc / normaliser."""
    import medseg.inference.windows as win

    acc = torch.rand(2, 3, 23, 17, 19, generator=torch.Generator().manual_seed(3)) + 0.5
    roi, ov = (8, 6, 10), (0.5, 0.3, 0.25)
    want = acc / win.normaliser(acc.shape[2:], roi, ov, blend=blend)
    monkeypatch.setattr(win, "_CACHE_MAX_VOXELS", 0)
    got = acc.clone()
    assert win.divide_by_normaliser_(got, roi, ov, blend=blend, slab=slab) is got
    assert torch.equal(got, want)
