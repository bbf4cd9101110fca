#!/usr/bin/env bash
# Architecture comparison on hippocampus fold 0 (docs/benchmarks.md, "Architecture comparison"):
# train each config for 24 x 50 iterations, then score the final-epoch weights on the 42 held-out
# cases through medseg predict + medseg evaluate. Outputs under out/arch/<name>/ (git-ignored).
#   benchmarks/arch_compare.sh NAME CONFIG [--set key=value ...]
# e.g. benchmarks/arch_compare.sh unet_2d configs/seg2d/hippocampus_unet.yaml
set -euo pipefail
name=$1; config=$2; shift 2
py=${PYTHON:-python}
out=$PWD/out/arch/$name   # absolute: medseg predict with a relative --output fails (batch._record joins it twice)
data=../shared/data/hippocampus
mkdir -p "$out"
$py -m medseg train --config "$config" --set training.epochs=24 --set output.dir="$out/bundle" \
    --set training.progress=false "$@" > "$out/train.log" 2>&1
# the held-out cases listed in the bundle, linked into VAL folders
rm -rf "$out/val"; mkdir -p "$out/val/images" "$out/val/labels"
$py - "$out" "$data" <<'PY'
import os, sys
from medseg.bundle import read_meta
out, data = sys.argv[1], os.path.abspath(sys.argv[2])
for c in read_meta(os.path.join(out, "bundle"))["data"]["val_cases"]:
    for sub, dst in (("imagesTr", "images"), ("labelsTr", "labels")):
        os.symlink(os.path.join(data, sub, c + ".nii.gz"), os.path.join(out, "val", dst, c + ".nii.gz"))
PY
rm -rf "$out/pred" "$out/eval"
$py -m medseg predict --model "$out/bundle" --weights last --input "$out/val/images" --output "$out/pred" \
    --no-progress > "$out/predict.log" 2>&1
$py -m medseg evaluate --pred "$out/pred" --ref "$out/val/labels" --out "$out/eval" \
    --label-names 1=anterior,2=posterior --no-progress > "$out/evaluate.log" 2>&1
echo "$name done: $out/eval/summary.json"
