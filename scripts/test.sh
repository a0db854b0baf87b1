#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv, dependencies, services, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/services.sh
echo "==> ruff"
.venv/bin/ruff check service operator tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
export PATH="$PWD/.tools:$PATH"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a broken suite, not a pass" >&2
  exit 1
fi
exit "$rc"
