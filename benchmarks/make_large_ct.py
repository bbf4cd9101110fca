"""A CT-sized test case made from the shared CT, for ``benchmarks/bench_large_volume.py``.

    PYTHONPATH=. python benchmarks/make_large_ct.py [--shape 300,512,512] [--fov 1.0] [--output out/large_ct]

Writes into ``--output``:

* ``image/ct.nii.gz``: TotalSegmentator's example CT (``../shared/data/totalsegmentator/example_ct.nii.gz``,
  112 x 101 x 122 voxels of 3 mm, 336 x 303 x 366 mm) resampled linearly to ``--shape`` (z, y, x;
  default 300 x 512 x 512, i.e. a 512 x 512 x 300 CT of 1.12 x 0.59 x 0.71 mm), rounded to int16
  as CT scanners store it. ``--fov F`` keeps only the centre fraction F of the field of view along
  each axis first (same voxel size for ``--fov 0.5 --shape 150,256,256``: a quarter-size memory
  check whose model grid is an eighth of the full one).
* ``ref/ct.nii.gz`` and ``pred/ct.nii.gz``: the two TotalSegmentator models' multi-label masks of
  the same CT (``example_seg.nii.gz`` and ``example_seg_fast.nii.gz``, 30 x 101 x 122, labels up
  to 117) resampled with nearest neighbour to the same shape: a realistic prediction / reference
  pair of CT size for ``medseg evaluate``.

Geometry: the field of view (and origin, direction) of each source is kept; only the voxel size
changes (``medseg.preprocess.resample_array(shape=...)``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "totalsegmentator"


def centre_crop(vol, fraction: float):
    """The centre ``fraction`` of ``vol``'s field of view along every axis (a Volume on the same voxel grid)."""
    from medseg.preprocess.crop import CropBox
    from medseg.volume import Volume

    if fraction >= 1.0:
        return vol
    shape = np.asarray(vol.shape)
    size = np.maximum(1, np.round(shape * fraction)).astype(int)
    lo = (shape - size) // 2
    box = CropBox(tuple(int(v) for v in lo), tuple(int(v) for v in lo + size), tuple(vol.shape))
    origin = np.asarray(vol.origin_mm) + box.offset_mm(vol.spacing_mm, vol.direction)
    return Volume(np.ascontiguousarray(vol.array[box.slices]), vol.spacing_mm, tuple(origin.tolist()), vol.direction,
                  is_label=vol.is_label)


def resized(vol, shape: tuple[int, int, int], *, is_label: bool):
    """``vol`` resampled to ``shape`` voxels, field of view kept (images: linear, rounded to int16)."""
    from medseg.preprocess.grid import grid_of, shape_grid
    from medseg.preprocess.resample import resample_array
    from medseg.volume import Volume

    g = shape_grid(grid_of(vol), shape)
    arr = resample_array(vol.array, vol.spacing_mm, shape=shape, is_label=is_label, order="linear",
                         anisotropy_threshold=1e9)
    if not is_label:
        arr = np.rint(arr).clip(-32768, 32767).astype(np.int16)
    return Volume(arr, g.spacing_mm, g.origin_mm, g.direction, is_label=is_label)


def make(output: Path, shape: tuple[int, int, int], fov: float, *, with_masks: bool = True) -> Path:
    from medseg.io import read_volume, write_volume

    src = SHARED / "example_ct.nii.gz"
    if not src.exists():
        raise SystemExit(f"{src} not found (the shared data folder ../shared/data)")
    ct = resized(centre_crop(read_volume(src), fov), shape, is_label=False)
    out = write_volume(ct, output / "image" / "ct.nii.gz")
    print(f"{out}: {ct.shape} int16, spacing {tuple(round(s, 4) for s in ct.spacing_mm)} mm, "
          f"{np.prod(ct.shape) * 4 / 2**20:.0f} MiB as float32")
    if with_masks:
        for name, folder in (("example_seg.nii.gz", "ref"), ("example_seg_fast.nii.gz", "pred")):
            lab = resized(centre_crop(read_volume(SHARED / name, is_label=True), fov), shape, is_label=True)
            print(write_volume(lab, output / folder / "ct.nii.gz"), f"labels up to {int(lab.array.max())}")
    return out


def parse_shape(text: str) -> tuple[int, int, int]:
    vals = tuple(int(v) for v in text.split(","))
    if len(vals) != 3 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--shape takes three positive sizes z,y,x, got {text!r}")
    return vals  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=parse_shape, default=(300, 512, 512), help="z,y,x voxels (default 300,512,512)")
    ap.add_argument("--fov", type=float, default=1.0, help="centre fraction of the field of view kept (default 1)")
    ap.add_argument("--output", type=Path, default=REPO / "out" / "large_ct")
    ap.add_argument("--no-masks", action="store_true", help="only the image (no evaluate pair)")
    args = ap.parse_args(argv)
    if not 0 < args.fov <= 1:
        ap.error("--fov must be in (0, 1]")
    make(args.output, args.shape, args.fov, with_masks=not args.no_masks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
