#!/usr/bin/env bash
# The main job: voice the synthetic keyword corpus on first use (espeak-ng, ~20 s), then train
# the keyword-spotting model with example-level DP-SGD (ε = 8, δ = 1e-5) and evaluate it on
# held-out speakers. Until the gossip simulator lands this is the centralized DP baseline.
# Extra arguments go to `flava-sim centralized` (e.g. --dp-epsilon 3, --epochs 10).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
BIN=.venv/bin
DATA=${FLAVA_DEMO_DATA:-data/synth}
OUT=${FLAVA_DEMO_OUT:-runs/demo}

if [ ! -f "$DATA/corpus.json" ]; then
    echo "demo: building the synthetic corpus in $DATA (60 speakers × 12 classes × 5 takes)…"
    "$BIN/flava-sim" dataset synth --out "$DATA" --speakers 60 --takes 5 --seed 0
fi
mkdir -p "$OUT"
echo "demo: training with DP-SGD on the training speakers, testing on held-out speakers…"
"$BIN/flava-sim" centralized --data "$DATA" --dp-epsilon 8 --save "$OUT/model.ckpt" \
    --out "$OUT/result.json" "$@"
echo "demo: model in $OUT/model.ckpt, result in $OUT/result.json"
echo "      try: $BIN/flava-node predict $DATA/yes/*_nohash_0.wav --model $OUT/model.ckpt"
