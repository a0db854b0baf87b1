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
export PATH="$PWD/.tools:$PATH"
# Compiled modules are cached (pytest's rewritten tests too): each worker and each pod
# process would compile them again otherwise.
unset PYTHONDONTWRITEBYTECODE
set +e
if [ "$#" = 0 ]; then
  # The tests that need no RabbitMQ or podman wait mostly on sockets and processes: four
  # workers, each taking whole files (docs/testing.md). The rest start, stop and time
  # brokers on the shared machine: one at a time.
  echo "==> pytest -m 'not broker' -n 4"
  .venv/bin/python -m pytest -m "not broker" -n 4
  quick=$?
  echo "==> pytest -m broker"
  .venv/bin/python -m pytest -m broker
  rc=$?
  if [ "$quick" = 5 ] || [ "$rc" = 5 ]; then
    rc=5
  elif [ "$quick" != 0 ] && { [ "$rc" = 0 ] || [ "$quick" -gt 1 ]; }; then
    rc=$quick
  fi
else
  echo "==> pytest $*"
  .venv/bin/python -m pytest "$@"
  rc=$?
fi
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
