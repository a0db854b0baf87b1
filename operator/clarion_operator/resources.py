"""The Deployment and Services of a gateway, built from its spec: pure functions.

Applying them is applying.py's job. The Deployment's ``replicas`` belongs to the
autoscaler: it is set on creation and afterwards only pulled back inside
``[min, max]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clarion import names
from clarion.config import default_of, drain_seconds, option

from . import pods
from .spec import GatewaySpec, ProbeSpec, SecretRef

#: The gateway container listens here; the Service maps ``spec.service.port`` to it.
CONTAINER_PORT = 8080
#: The internal port (``/api``, ``/admin``, ``/metrics``; the gateway's ``--api-port``):
#: only the ``<name>-api`` Service reaches it.
API_PORT = 8081
API_PORT_NAME = pods.API_PORT_NAME
API_SERVICE_SUFFIX = "-api"
#: The longest gateway name (the CRD's ``metadata.name`` bound): its pods are
#: ``<name>-<pod-template-hash, up to 10>-<5 random>`` and the API server cuts what
#: precedes the random part to 58 characters, so up to 46 the pod names keep the
#: whole gateway name (the dashboard's Gateway variable reads it back from them);
#: ``<name>-api`` then fits a Service name's 63 too.
MAX_GATEWAY_NAME = 58 - 1 - 10 - 1
#: The gateway's own drain timing (its defaults for ``clarion serve``).
DRAIN_DELAY = float(default_of("drain_delay"))
DRAIN_WINDOW = float(default_of("drain_window"))
DRAIN_RATE = float(default_of("drain_rate"))
#: The longest drain: a full pod (``--max-connections``) closed at ``DRAIN_RATE``.
LONGEST_DRAIN = drain_seconds(int(default_of("max_connections")), DRAIN_WINDOW, DRAIN_RATE)
#: preStop waits this long so endpoints drop the pod before it gets SIGTERM.
PRESTOP_SLEEP = 5
#: SIGKILL comes only after preStop + the gateway's drain delay and its longest drain
#: + margin (the close frames, uvicorn's graceful shutdown).
TERMINATION_GRACE = int(PRESTOP_SLEEP + DRAIN_DELAY + LONGEST_DRAIN + 10)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Owned objects go when the gateway goes (garbage collection by owner reference)."""
    meta = owner.get("metadata", {})
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.CRD_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _value(setting: str, value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return {"name": option(setting).env, "value": str(value)}


def _secret(setting: str, ref: SecretRef, optional: bool) -> dict[str, Any]:
    return {
        "name": option(setting).env,
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key, "optional": optional}},
    }


def container_env(name: str, namespace: str, spec: GatewaySpec) -> list[dict[str, Any]]:
    """What ``clarion serve`` reads, by the names its settings declare (``clarion.config``)."""
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    env: list[dict[str, Any]] = [
        {"name": option("pod_name").env, "valueFrom": pod_name},
        _value("host", "0.0.0.0"),
        _value("port", CONTAINER_PORT),
        _secret("amqp_url", spec.broker.url_secret_ref, optional=False),
        _value("exchange", exchange_of(namespace, name, spec)),
        _value("queue_prefix", spec.broker.queue_prefix),
        _value("routing", spec.broker.routing),
        _value("auth", spec.auth.mode),
        _value("allow_client_publish", spec.auth.allow_client_publish),
        _value("drain_delay", DRAIN_DELAY),
        _value("drain_window", DRAIN_WINDOW),
        _value("drain_rate", DRAIN_RATE),
    ]
    env.append(_value("api_port", API_PORT))
    if spec.namespaces:
        env.append(_value("namespaces", spec.namespaces))
    if spec.auth.mode == "jwt":
        env.append(_secret("jwt_secret", spec.auth.jwt_secret_ref, optional=False))
    # Fail closed: a missing API key stops the pod (CreateContainerConfigError)
    # rather than opening the publish API, unless the spec says it is public.
    public = spec.auth.public_api
    if public:
        env.append(_value("public_api", True))
    env.append(_secret("api_keys", spec.auth.api_key_secret_ref, optional=public))
    env.append(_secret("admin_token", spec.auth.admin_token_secret_ref, optional=True))
    return env


def exchange_of(namespace: str, name: str, spec: GatewaySpec) -> str:
    """The gateway's fanout exchange: its own unless the spec names one.

    Two gateways in one vhost must not share an exchange (each would deliver the
    other's messages) nor the history stream named after it (``<exchange>.history``).
    The ``gw`` part keeps it clear of the pod queues' ``clarion.pod.`` prefix (a
    namespace called ``pod``), which the sweep deletes.
    """
    return spec.broker.exchange or f"{names.APP_NAME}.gw.{namespace}.{name}"


def default_spread(name: str) -> list[dict[str, Any]]:
    """Spread the pods over nodes (and zones where there are): a node loss takes half at most.

    ``ScheduleAnyway``: a single-node cluster (kind) still runs two pods.
    """
    selector = {"matchLabels": names.gateway_labels(name)}
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def _probe(path: str, probe: ProbeSpec) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": names.HTTP_PORT_NAME},
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "failureThreshold": probe.failure_threshold,
    }


def scrape_annotations() -> dict[str, str]:
    """Where Prometheus reads a gateway pod's metrics: the internal port."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(API_PORT),
        "prometheus.io/path": "/metrics",
    }


def container_ports() -> list[dict[str, Any]]:
    return [
        {"name": names.HTTP_PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"},
        {"name": API_PORT_NAME, "containerPort": API_PORT, "protocol": "TCP"},
    ]


def pod_template(name: str, namespace: str, spec: GatewaySpec) -> dict[str, Any]:
    """The gateway pods: what ``clarion serve`` needs, plus the spec's scheduling fields."""
    p = spec.pod
    labels = {**p.labels, **names.gateway_labels(name)}
    annotations = {**(scrape_annotations() if p.scrape_annotations else {}), **p.annotations}
    env = [*container_env(name, namespace, spec), *p.env]
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": TERMINATION_GRACE,
        "automountServiceAccountToken": p.automount_service_account_token,
        "containers": [
            {
                "name": "gateway",
                "image": spec.image,
                "command": ["clarion", "serve"],
                "ports": container_ports(),
                "env": env,
                "readinessProbe": _probe("/readyz", p.readiness),
                "livenessProbe": _probe("/healthz", p.liveness),
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP)]}}},
                "resources": spec.resources,
                "securityContext": {
                    "runAsNonRoot": True,
                    "readOnlyRootFilesystem": spec.read_only_root_filesystem,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        "topologySpreadConstraints": list(
            default_spread(name)
            if p.topology_spread_constraints is None
            else p.topology_spread_constraints
        ),
    }
    optional: dict[str, Any] = {
        "imagePullSecrets": [{"name": s} for s in p.image_pull_secrets],
        "nodeSelector": p.node_selector,
        "tolerations": list(p.tolerations),
        "affinity": p.affinity,
        "priorityClassName": p.priority_class_name,
        "serviceAccountName": p.service_account_name,
    }
    pod.update({k: v for k, v in optional.items() if v})
    meta: dict[str, Any] = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": pod}


def deployment(
    name: str,
    namespace: str,
    spec: GatewaySpec,
    owner: Mapping[str, Any],
    replicas: int | None,
) -> dict[str, Any]:
    """The gateway's Deployment; ``replicas=None`` leaves the live count to the autoscaler."""
    labels = names.gateway_labels(name)
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "selector": {"matchLabels": labels},
            # maxUnavailable 0 by default: never take a pod away before its
            # replacement is ready, each one holds sockets.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.pod.max_surge,
                    "maxUnavailable": spec.pod.max_unavailable,
                },
            },
            "template": pod_template(name, namespace, spec),
        },
    }
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def _service(
    name: str, namespace: str, owner: Mapping[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": names.gateway_labels(owner["metadata"]["name"]),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def service(
    name: str, namespace: str, spec: GatewaySpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """The public Service in front of the pods (plain round robin: no session affinity)."""
    sv = spec.service
    body = _service(
        name,
        namespace,
        owner,
        {
            "type": sv.type,
            "selector": names.gateway_labels(name),
            "ports": [
                {
                    "name": names.HTTP_PORT_NAME,
                    "port": sv.port,
                    "targetPort": names.HTTP_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    )
    if sv.annotations:
        body["metadata"]["annotations"] = dict(sv.annotations)
    if sv.load_balancer_source_ranges:
        body["spec"]["loadBalancerSourceRanges"] = list(sv.load_balancer_source_ranges)
    return body


def api_service_name(name: str) -> str:
    return f"{name}{API_SERVICE_SUFFIX}"


def api_service(
    name: str, namespace: str, spec: GatewaySpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """``<name>-api``: the internal Service backends publish through (never exposed)."""
    return _service(
        api_service_name(name),
        namespace,
        owner,
        {
            "type": "ClusterIP",
            "selector": names.gateway_labels(name),
            "ports": [
                {
                    "name": API_PORT_NAME,
                    "port": API_PORT,
                    "targetPort": API_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    )


def owned(
    name: str,
    namespace: str,
    spec: GatewaySpec,
    owner: Mapping[str, Any],
    live_deployment: Mapping[str, Any] | None,
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) of everything a gateway owns, as its spec says."""
    replicas = replicas_on_apply(live_deployment, spec)
    return [
        ("Deployment", deployment(name, namespace, spec, owner, replicas)),
        ("Service", service(name, namespace, spec, owner)),
        ("Service", api_service(name, namespace, spec, owner)),
    ]


def replicas_on_apply(existing: Mapping[str, Any] | None, spec: GatewaySpec) -> int | None:
    """Replicas to write when applying: min for a new Deployment, a clamp for a live one."""
    if existing is None:
        return spec.min_replicas
    current = existing.get("spec", {}).get("replicas")
    if not isinstance(current, int):
        return spec.min_replicas
    clamped = max(spec.min_replicas, min(spec.max_replicas, current))
    return None if clamped == current else clamped
