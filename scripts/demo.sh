#!/usr/bin/env bash
# The main job: a 16-node gossip-learning simulation on the synthetic keyword corpus.
# Every node trains the keyword model with example-level DP-SGD (ε = 8, δ = 1e-5), 2 of the
# 16 peers are Byzantine (ALIE), honest nodes merge with self-centred clipping. The corpus is
# voiced with espeak-ng on first use (~80 s). Prints the summary and where the plots are.
# Extra arguments go to `flava-sim run` (e.g. --seed 3, --set privacy.epsilon=3).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
OUT=${FLAVA_DEMO_OUT:-runs/demo}
echo "demo: simulating 16 DP-SGD nodes (2 Byzantine) gossiping keyword models…"
.venv/bin/flava-sim run configs/sim_demo.yaml --out "$OUT" "$@"
echo "demo: compare runs with: .venv/bin/flava-sim report $OUT runs/<other> --out runs/compare"
