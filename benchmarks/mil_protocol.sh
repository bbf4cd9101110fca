#!/bin/sh
# Full MIL benchmark protocol: 10-fold CV x 5 repeats, seed 0, built-in defaults, both attention
# variants, MUSK1 / MUSK2 / ELEPHANT (CSV) and FOX (Andrews .mat): 8 independent runs, side by side.
#   sh benchmarks/mil_protocol.sh [OUT=out/mil]   then   python benchmarks/mil_table.py OUT/*/summary.json
# Extra `mil cv` arguments for every run in MIL_ARGS, e.g. MIL_ARGS="--select-epochs 5 10 20 40".
OUT=${1:-out/mil}
D=${MIL_DATA:-../shared/data/mil}
for ds in musk1.csv andrews_mat/fox_100x100_matlab.mat elephant.csv musk2.csv; do
  for m in attention_mil gated_attention_mil; do
    name=$(basename "$ds" | sed 's/[._].*//')_$(echo "$m" | cut -c1-5)
    PYTHONPATH=. python -m medseg mil cv --data "$D/$ds" --folds 10 --repeats 5 --seed 0 --model "$m" \
      $MIL_ARGS --out "$OUT/$name" > "$OUT.$name.log" 2>&1 || echo "FAILED $name" &
  done
done
wait
