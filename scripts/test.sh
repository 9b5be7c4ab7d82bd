#!/usr/bin/env bash
# The test command: setup when needed, then ruff, mypy (strict: package, tests, scripts), pytest.
# Fast suite by default; `scripts/test.sh --slow` (or FLAVA_SLOW=1) also runs tests marked slow.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
PY=.venv/bin/python

args=()
for a in "$@"; do
    if [ "$a" = "--slow" ]; then export FLAVA_SLOW=1; else args+=("$a"); fi
done

echo "== ruff"
$PY -m ruff check flava_p2p tests scripts
echo "== mypy (package strict; tests and scripts too)"
$PY -m mypy
echo "== pytest"
# Two cores: keep torch from oversubscribing them inside tests.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$PY -m pytest ${args[@]+"${args[@]}"}
