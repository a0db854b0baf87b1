#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv, dependencies, services, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/services.sh
echo "==> ruff"
.venv/bin/ruff check service operator tests bench clients/python
echo "==> mypy"
.venv/bin/mypy
echo "==> clients/js: npm ci, npm test (unit, size budget, end to end on real pods)"
command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test)
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
if [ "$rc" = 1 ] && [ "${CI:-}" = "true" ]; then
  # The suite drives real processes and a real broker on a shared 2-core
  # machine. In CI, failed tests get one more run on their own: a failure that
  # repeats fails the build; one that does not is reported as FLAKY above the
  # final result, to be fixed, not hidden.
  echo "==> pytest: re-running the failed tests once (CI); if they pass now, they are FLAKY" >&2
  set +e
  .venv/bin/python -m pytest --last-failed --last-failed-no-failures none "$@"
  rc=$?
  set -e
fi
exit "$rc"
