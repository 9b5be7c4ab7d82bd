#!/usr/bin/env bash
# One-time (and idempotent) setup: espeak-ng, a .venv, the package editable with dev tools.
# A second run on a set-up machine only checks a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.flava-setup-stamp

need_espeak() {
    command -v espeak-ng >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing espeak-ng (voices the synthetic speech corpus)…"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
    else
        echo "setup: espeak-ng is missing and I am not root." >&2
        echo "       Install it with:  sudo apt-get install -y espeak-ng" >&2
        echo "       (it voices the synthetic speech corpus used by the tests and the demo)" >&2
        exit 1
    fi
}

need_espeak

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python >= 3.11 is required; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Reinstall only when the dependency list changed since the last successful setup.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
echo "setup: installing flava-p2p and its dependencies into $VENV (first time: ~2-3 minutes)…"
log=$VENV/setup.log
if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
       "$VENV/bin/python" -m pip install -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install failed; full log in $log" >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "setup: done."
