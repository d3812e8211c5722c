#!/usr/bin/env bash
# make bench: the CPU benchmark set (issue 6). Tables on stdout, JSON under bench_out/.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-bench_out}
mkdir -p "$OUT"
STORE=demo_out/bbc
if ! "$BIN/featstore" verify "$STORE" --no-values --quiet >/dev/null 2>&1; then
    STORE="$OUT/bbc"
    "$BIN/python" benchmarks/bbc.py --out "$OUT/data"
    "$BIN/featstore" extract --model all-minilm-l6-v2 --data train="$OUT/data/train.csv" \
        --data validation="$OUT/data/validation.csv" --data test="$OUT/data/test.csv" --id-column id \
        --label-column topic --layers all --max-length 256 --out "$STORE" --quiet
fi
"$BIN/python" benchmarks/bench_extract.py --text full --limit 120 --reps 3 --json "$OUT/extract_full.json"
"$BIN/python" benchmarks/bench_extract.py --text title --limit 445 --max-length 128 --reps 3 --json "$OUT/extract_title.json"
"$BIN/python" benchmarks/bench_write.py --store "$STORE" --mb 1024 --reps 3 --json "$OUT/write.json"
"$BIN/python" benchmarks/bench_read.py --store "$STORE" --reps 3 --json "$OUT/read.json"
