"""Sliding-window probabilities finished slab by slab (issue 18, :mod:`medseg.inference.stream`): the
values of the whole-volume path (sliding_window, then the in-place activation) without its float32
accumulator; float16 only rounds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.inference.predictor import Predictor
from medseg.inference.sliding_window import sliding_window
from medseg.inference.stream import can_stream, stream_probabilities
from medseg.inference.tta import activate_
from medseg.inference.windows import mirror_dims
from medseg.volume import Volume
from tests.inference.helpers import blob_image, make_bundle


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])        # batches within and across rows of window starts
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror", [(), (0, 2)])
def test_streamed_probabilities_equal_the_whole_volume_path(batch_size, blend, mirror):
    net = _net()
    x = torch.randn(1, 1, 41, 29, 35, generator=torch.Generator().manual_seed(1)) * 2
    roi, overlap = (16, 12, 16), 0.5
    with torch.no_grad():
        ref = activate_(sliding_window(net, x, roi, overlap=overlap, batch_size=batch_size, blend=blend,
                                       mirror_axes=mirror), "softmax")
        got = stream_probabilities(net, x, roi, overlap, batch_size=batch_size, blend=blend,
                                   flips=mirror_dims(mirror), dtype=torch.float32)
        half = stream_probabilities(net, x, roi, overlap, batch_size=batch_size, blend=blend,
                                    flips=mirror_dims(mirror))
    assert got.dtype == torch.float32 and half.dtype == torch.float16 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-7)       # float32 rounding of the softmax at most
    assert float((half.float() - ref).abs().max()) <= 2.0 ** -12   # float16's rounding of values in [0, 1]


def test_what_can_stream():
    assert can_stream(torch.zeros(1, 1, 20, 20, 20), (16, 16, 16))
    assert not can_stream(torch.zeros(2, 1, 20, 20, 20), (16, 16, 16))      # two cases
    assert not can_stream(torch.zeros(1, 1, 20, 10, 20), (16, 16, 16))      # padded along y
    assert not can_stream(torch.zeros(1, 1, 20, 20, 20), (16, 16))          # a 2D model slice by slice
    with pytest.raises(ValueError, match="unpadded"):
        stream_probabilities(_net(), torch.zeros(1, 1, 20, 10, 20), (16, 16, 16))


def test_a_large_case_gets_the_labels_of_the_float32_path(tmp_path, monkeypatch):
    """Through the predictor: a case above the streaming size gets float16 probabilities slab by slab and
    the labels of the float32 path (asked for with probabilities=True), up to float16 near-ties."""
    import medseg.inference.predictor as predictor
    import medseg.inference.stream as stream

    bundle = make_bundle(tmp_path / "b", patch=(16, 16, 16), seed=4)
    vol = Volume(blob_image((40, 36, 30), seed=8), spacing_mm=(1.3, 0.9, 1.1))
    p = Predictor.from_bundle(bundle, postprocess=False, tta_axes=())
    calls = []
    real = stream.stream_probabilities
    monkeypatch.setattr(stream, "stream_probabilities", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(predictor, "STREAM_BYTES", 1 << 10)
    labels = p.predict_volume(vol).label.array
    assert calls == [1]
    full = p.predict_volume(vol, probabilities=True)
    assert calls == [1]                                   # probabilities asked for: the float32 path
    same = np.mean(labels == full.label.array)
    assert same >= 0.999, same
    monkeypatch.setattr(predictor, "STREAM_BYTES", 1 << 40)
    np.testing.assert_array_equal(p.predict_volume(vol).label.array, full.label.array)
