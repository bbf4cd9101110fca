"""medseg.inference.sliding_window against MONAI's sliding_window_inference, side by side in one run.

    PYTHONPATH=. python benchmarks/bench_sliding_window.py [--repeat 5] [--size 160] [--roi 64]

Same network (``monai.networks.nets.UNet``, channels 16-32-64-128, strides 2, random weights, eval
mode), same volume (smoothed noise), same window, overlap 0.5, Gaussian blending (sigma = roi/8),
4 windows per forward pass, both under ``torch.inference_mode`` on the CPU. Also times the forward
passes alone (the same batches of windows, pre-cut), so that the stitching overhead of each
implementation is ``(total - forward) / forward``. Prints medians over ``--repeat`` runs, the
argmax agreement and the largest absolute logit difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--roi", type=int, default=64)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out-channels", type=int, default=3)
    ap.add_argument("--stitch-repeat", type=int, default=7)
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from medseg.inference import sliding_window
    from medseg.inference.windows import window_grid

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=args.out_channels, channels=(16, 32, 64, 128),
               strides=(2, 2, 2), num_res_units=2).eval()
    noise = torch.randn(1, 1, args.size, args.size, args.size, generator=torch.Generator().manual_seed(1))
    image = torch.nn.functional.avg_pool3d(noise, 5, stride=1, padding=2) * 5  # smooth, structured input
    roi = (args.roi,) * 3

    def run_monai():
        with torch.inference_mode():
            return sliding_window_inference(image, roi, args.batch, net, overlap=args.overlap, mode="gaussian",
                                            sigma_scale=0.125)

    def run_medseg():
        return sliding_window(net, image, roi, overlap=args.overlap, batch_size=args.batch, blend="gaussian")

    starts = window_grid(image.shape[2:], roi, (args.overlap,) * 3)
    wins = [image[(0, slice(None), *(slice(s, s + args.roi) for s in st))] for st in starts]
    batches = [torch.stack(wins[i:i + args.batch]) for i in range(0, len(wins), args.batch)]

    def run_forward():
        with torch.inference_mode():
            for b in batches:
                net(b)

    # Stitching alone: a "model" that returns a precomputed output costs nothing, so what remains is
    # cutting windows, weighting, adding and normalising.
    canned = torch.randn(args.batch, args.out_channels, *roi, generator=torch.Generator().manual_seed(2))

    def fake(x):
        return canned[: x.shape[0]]

    stitch = {"monai": [], "medseg": []}
    for _ in range(args.stitch_repeat):
        for name in stitch:
            t = time.perf_counter()
            if name == "monai":
                with torch.inference_mode():
                    sliding_window_inference(image, roi, args.batch, fake, overlap=args.overlap, mode="gaussian")
            else:
                sliding_window(fake, image, roi, overlap=args.overlap, batch_size=args.batch)
            stitch[name].append(time.perf_counter() - t)
    for k in ("monai", "medseg"):
        print(f"stitching alone {k:11s} {statistics.median(stitch[k]):6.3f} s (model returns a precomputed "
              f"output; min {min(stitch[k]):.3f} s)", flush=True)
    print(f"stitching speed-up        {statistics.median(stitch['monai']) / statistics.median(stitch['medseg']):.2f}x",
          flush=True)

    with torch.inference_mode():  # warm-up: one pass (first-call overheads)
        net(batches[0])
    times = {"monai": [], "medseg": [], "forward": []}
    fns = {"monai": run_monai, "medseg": run_medseg, "forward": run_forward}
    results = {}
    for _ in range(args.repeat):
        for name, fn in fns.items():  # interleaved, so load changes hit all three alike
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
            print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}

    ref = results["monai"]
    ref = ref.as_tensor() if hasattr(ref, "as_tensor") else ref
    ours = results["medseg"]
    agree = float((ours.argmax(1) == ref.argmax(1)).float().mean()) * 100
    max_diff = float((ours - ref).abs().max())

    print(f"out channels {args.out_channels}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"volume {args.size}^3, window "
          f"{args.roi}^3, overlap {args.overlap}, {len(starts)} windows in {len(batches)} passes of "
          f"{args.batch}; median of {args.repeat}")
    print(f"{'':22s} {'median s':>9s} {'min s':>8s} {'all runs s':>30s}")
    for k in ("forward", "monai", "medseg"):
        print(f"{k:22s} {med[k]:9.3f} {min(times[k]):8.3f} {' '.join(f'{t:.2f}' for t in times[k]):>30s}")
    for k in ("monai", "medseg"):
        print(f"stitching overhead {k:8s} {100 * (med[k] - med['forward']) / med['forward']:6.1f} % of forward time")
    print(f"speed-up medseg vs MONAI  {med['monai'] / med['medseg']:.2f}x (median), "
          f"{min(times['monai']) / min(times['medseg']):.2f}x (min)")
    for k in ("monai", "medseg"):
        fwd = min(times['forward'])
        print(f"overhead from minima {k:6s} {100 * (min(times[k]) - fwd) / fwd:6.1f} %")
    print(f"argmax agreement          {agree:.4f} %   max |logit diff| {max_diff:.2e} (same importance map "
          f"everywhere)")


if __name__ == "__main__":
    main()
