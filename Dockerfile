# syntax=docker/dockerfile:1
# Clarion's two images, from the repository root:
#   docker build --target gateway  -t ghcr.io/example/clarion:0.1.0 .
#   docker build --target operator -t ghcr.io/example/clarion-operator:0.1.0 .
# Stages: builder (compilers; the wheels of both images) -> base (Python and the user,
# no build tools) -> gateway-base / operator (each installs its packages from the
# builder's wheels) -> gateway-dev / operator-dev (Tilt's live update: the process
# restarts when synced code changes; never deploy these) -> gateway (the default).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first (a layer that survives code changes), read from pyproject.toml (the
# operator's extra included) and the client's (clients/python, built below: the server
# pins clarion-client at its version). Each image installs only what it needs of them.
COPY pyproject.toml ./
COPY clients/python/pyproject.toml ./clients/python/
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; c = tomllib.load(open('clients/python/pyproject.toml', 'rb'))['project']; print('\n'.join(r for r in d['dependencies'] + d['optional-dependencies']['operator'] + c['dependencies'] if not r.startswith('clarion-client')))" > requirements.txt \
 && pip wheel --wheel-dir /wheels -r requirements.txt
# Then Clarion itself.
COPY README.m[d] ./
COPY clients/python ./clients/python
COPY service ./service
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels ./clients/python . \
 && sha256sum /wheels/*.whl > /wheels.sha256
COPY scripts/dev-reload.sh /dev-reload.sh

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 clarion \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin clarion
# podman/buildah key a RUN's cache on its text, not on what --mount brings in: copying
# the wheels' checksums first makes new wheels re-run the installs (and records them).
COPY --from=builder /wheels.sha256 /opt/wheels.sha256
WORKDIR /tmp

# The operator. Install only from the builder's wheels: no compiler enters an image.
FROM base AS operator
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels "clarion[operator]"
USER 10001:10001
# kopf liveness (GET /healthz) and Prometheus metrics.
EXPOSE 8080 9090
CMD ["clarion-operator"]

FROM operator AS operator-dev
USER root
RUN --mount=type=bind,from=builder,source=/dev-reload.sh,target=/dev-reload.sh \
    sh /dev-reload.sh clarion-operator clarion_operator clarion
USER 10001:10001

# The gateway (the operator runs it in the pods of each WebSocketGateway).
FROM base AS gateway-base
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels clarion
USER 10001:10001
EXPOSE 8080
CMD ["clarion", "serve"]

FROM gateway-base AS gateway-dev
USER root
RUN --mount=type=bind,from=builder,source=/dev-reload.sh,target=/dev-reload.sh \
    sh /dev-reload.sh clarion clarion
USER 10001:10001

FROM gateway-base AS gateway
