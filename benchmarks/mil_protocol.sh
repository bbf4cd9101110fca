#!/bin/sh
# Full MIL benchmark protocol: 10-fold CV x 5 repeats, seed 0, built-in defaults, both attention
# variants, MUSK1 / MUSK2 / ELEPHANT (CSV) and FOX (Andrews .mat). Two chains run side by side.
#   sh benchmarks/mil_protocol.sh [OUT=out/mil]   then   python benchmarks/mil_table.py OUT/*/summary.json
OUT=${1:-out/mil}
D=${MIL_DATA:-../shared/data/mil}
run() {  # model suffix
  for ds in musk1.csv andrews_mat/fox_100x100_matlab.mat elephant.csv musk2.csv; do
    name=$(basename "$ds" | sed 's/[._].*//')
    PYTHONPATH=. python -m medseg mil cv --data "$D/$ds" --folds 10 --repeats 5 --seed 0 \
      --model "$1" --out "$OUT/${name}_$2" || echo "FAILED $ds $1"
  done
}
run attention_mil att &
run gated_attention_mil gated &
wait
