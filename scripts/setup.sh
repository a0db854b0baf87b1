#!/usr/bin/env bash
# Create .venv and install Clarion into it. Usage: scripts/setup.sh [EXTRAS]
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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing clarion${extras:+[$extras]} into .venv"
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import clarion" 
  touch "$stamp"
fi
