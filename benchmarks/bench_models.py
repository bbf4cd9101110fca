"""Forward time of medseg's default 3D U-Net next to MONAI's DynUNet (the nnU-Net-style U-Net)
built with the same widths, strides, norm and kernel sizes, on the same input in one run.

    PYTHONPATH=. python benchmarks/bench_models.py --size 64 --repeats 5 [--train]

Prints parameter counts, the median time per forward (eval, inference mode; or forward+backward
with --train) and the ratio MONAI / medseg (> 1 means medseg is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _once(model: torch.nn.Module, x: torch.Tensor, *, train: bool) -> float:
    t0 = time.perf_counter()
    if train:
        y = model(x)
        (y * 1e-3).square().sum().backward()
    else:
        with torch.inference_mode():
            model(x)
    return time.perf_counter() - t0


def _time_pair(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, *, repeats: int,
               train: bool) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, calls interleaved so load changes hit both alike."""
    _once(a, x, train=train), _once(b, x, train=train)  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_once(a, x, train=train))
        tb.append(_once(b, x, train=train))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", action="store_true", help="time forward + backward in train mode")
    args = p.parse_args()

    from monai.networks.nets import DynUNet

    from medseg.models import create_seg_model
    from medseg.models.blocks import count_parameters

    torch.manual_seed(0)
    features = (16, 32, 64, 128, 256)
    ours = create_seg_model("unet", spatial_dims=3, in_channels=1, out_channels=2, features=features)
    peer = DynUNet(spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3] * 5,
                   strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2] * 4, filters=list(features),
                   norm_name=("instance", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                   res_block=False)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size)
    for m in (ours, peer):
        m.train(args.train)
    t_ours, t_peer = _time_pair(ours, peer, x, repeats=args.repeats, train=args.train)
    mode = "forward+backward (train)" if args.train else "forward (eval)"
    print(f"input {tuple(x.shape)}, {mode}, torch threads {torch.get_num_threads()}")
    print(f"medseg unet     params {count_parameters(ours):>9,}  median {t_ours:.3f} s")
    print(f"monai DynUNet   params {count_parameters(peer):>9,}  median {t_peer:.3f} s")
    print(f"ratio monai/medseg {t_peer / t_ours:.2f}")


if __name__ == "__main__":
    main()
