"""Training throughput of medseg's trainer on hippocampus-sized patches (CPU).

Trains a ~1.4 M-parameter 3-level 3D U-Net-like net (channels 16-32-64-128, two 3x3x3 convs per
level, instance norm, deep supervision) on the real hippocampus set for a fixed number of
iterations and prints iterations/s for several batch sizes and DataLoader worker counts.
The first epoch (warm-up) is excluded from the timing.

    PYTHONPATH=. python benchmarks/bench_train_speed.py [--iters 20] [--batch 2 4] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from medseg.models import SEG_MODELS, register_seg_model


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(0.01), nn.Conv3d(cout, cout, 3, padding=1),
                         nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01))


class BenchUNet(nn.Module):
    def __init__(self, *, spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128)):
        super().__init__()
        c = channels
        self.encs = nn.ModuleList([_block(in_channels, c[0])] + [_block(c[i - 1], c[i], 2) for i in range(1, len(c))])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(c[i], c[i - 1], 2, stride=2) for i in range(len(c) - 1, 0, -1)])
        self.decs = nn.ModuleList([_block(2 * c[i - 1], c[i - 1]) for i in range(len(c) - 1, 0, -1)])
        self.heads = nn.ModuleList([nn.Conv3d(c[i - 1], out_channels, 1) for i in range(len(c) - 1, 0, -1)])

    def forward_with_aux(self, x):
        skips = []
        for enc in self.encs:
            x = enc(x)
            skips.append(x)
        outs = []
        for up, dec, head, skip in zip(self.ups, self.decs, self.heads, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
            outs.append(head(x))
        return outs[::-1]

    def forward(self, x):
        return self.forward_with_aux(x)[0]


if "bench_unet" not in SEG_MODELS:
    register_seg_model("bench_unet")(BenchUNet)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data/hippocampus")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--max-cases", type=int, default=40)
    args = ap.parse_args()
    from medseg.training import train

    n_params = sum(p.numel() for p in BenchUNet().parameters())
    print(f"bench_unet: {n_params / 1e6:.2f} M parameters, torch threads {torch.get_num_threads()}")
    for batch in args.batch:
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = {"data": {"root": args.root, "max_cases": args.max_cases},
                       "model": {"name": "bench_unet"},
                       "plan": {"patch_size": [40, 56, 40], "divisor": 8, "normalization": "zscore"},
                       "training": {"epochs": 2, "iters_per_epoch": args.iters, "batch_size": batch,
                                    "num_workers": workers, "val_every": 100, "progress": False},
                       "output": {"dir": str(Path(tmp) / "b")}}
                cfg["data"]["fold"] = "all"
                t0 = time.perf_counter()
                train(cfg)
                wall = time.perf_counter() - t0
                import csv

                rows = list(csv.DictReader(open(Path(tmp) / "b" / "curves.csv")))
                ep2 = float(rows[1]["epoch_s"])
                print(json.dumps({"batch": batch, "workers": workers, "iters_per_s": round(args.iters / ep2, 3),
                                  "patches_per_s": round(args.iters * batch / ep2, 2),
                                  "epoch2_s": ep2, "wall_s": round(wall, 1)}), flush=True)


if __name__ == "__main__":
    main()
