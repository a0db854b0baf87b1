#!/usr/bin/env bash
# Build the gateway and operator images locally with podman (tests/images runs them).
#   scripts/images.sh    # install podman if missing, build the base image once, build both
# No registry can be pulled from here, so the Python base image is made with debootstrap
# and cached as localhost/pybase:3.11-bookworm; the Dockerfile takes it as PYTHON_IMAGE.
# Tags: localhost/clarion:test and localhost/clarion-operator:test (override with
# CLARION_IMAGE / CLARION_OPERATOR_IMAGE). The build context is the working tree, or
# CLARION_BUILD_CONTEXT (e.g. a `git archive` of one commit).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=localhost/pybase:3.11-bookworm
GATEWAY=${CLARION_IMAGE:-localhost/clarion:test}
OPERATOR=${CLARION_OPERATOR_IMAGE:-localhost/clarion-operator:test}
CONTEXT=${CLARION_BUILD_CONTEXT:-.}
CONF=/etc/containers/containers.conf
CA=/etc/ssl/certs/ca-certificates.crt

# --- podman, buildah, debootstrap, runc (Debian packages) -----------------
need=()
for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> apt-get install ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- runtime settings -----------------------------------------------------
# podman's default runtime (crun) fails here: it cannot raise RLIMIT_NOFILE without
# CAP_SYS_RESOURCE, and it does not support cgroups in hybrid mode. runc with limits
# below the host's works.
if ! { [ -f "$CONF" ] && grep -q '^runtime = "runc"' "$CONF" && grep -q '^default_ulimits' "$CONF"; }; then
  echo "==> writing $CONF (runtime runc, ulimits nofile=20000 nproc=1000)"
  mkdir -p "$(dirname "$CONF")"
  [ -f "$CONF" ] && cp "$CONF" "$CONF.orig"
  cat >"$CONF" <<'EOF'
# Written by clarion's scripts/images.sh (the previous file, if any, is containers.conf.orig).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]

[engine]
runtime = "runc"
EOF
fi

# --- the base image: Debian bookworm with Python 3.11, built once ----------
if ! podman image exists "$BASE"; then
  echo "==> building $BASE with debootstrap (about 1.5 min, once)"
  rootfs=$(mktemp -d /var/tmp/pybase.XXXXXX)
  trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # `python` and `pip` on the PATH, as in the official python images.
  chroot "$rootfs" python3 -m venv /usr/local/pybase
  for exe in python python3 pip pip3; do
    ln -sf "/usr/local/pybase/bin/$exe" "$rootfs/usr/local/bin/$exe"
  done
  # TLS to the package index is intercepted by a CA only the host's bundle has.
  cp "$CA" "$rootfs/usr/local/share/host-ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --quiet \
    --change "ENV PIP_CERT=/usr/local/share/host-ca-certificates.crt" \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# --- the two images: two targets of one Dockerfile, sharing its builder stage ---
# (podman's layer cache makes a re-run with no change quick)
build() {  # build TARGET TAG
  echo "==> podman build --target $1 -t $2"
  local log
  log=$(mktemp)
  if ! podman build --network host --build-arg "PYTHON_IMAGE=$BASE" \
      -f "$CONTEXT/Dockerfile" --target "$1" -t "$2" "$CONTEXT" >"$log" 2>&1; then
    tail -40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}
build gateway "$GATEWAY"
build operator "$OPERATOR"
echo "==> images ready: $GATEWAY $OPERATOR"
