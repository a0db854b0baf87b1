#!/usr/bin/env bash
# Create .venv and install Clarion and its client (clients/python) into it.
# Usage: scripts/setup.sh [EXTRAS]
#   scripts/setup.sh          # just the gateway (what `make run` needs)
#   scripts/setup.sh dev      # + operator, tests, linters
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-${extras:-core}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ clients/python/pyproject.toml -nt "$stamp" ]; then
  echo "==> installing clarion-client and clarion${extras:+[$extras]} into .venv"
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  # The client first, from the tree: the server pins clarion-client at its own version,
  # which an index has only once that version is released.
  .venv/bin/python -m pip install -q -e clients/python -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import clarion, clarion_client"
  touch "$stamp"
fi
