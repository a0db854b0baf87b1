"""The Deployment and Service of a gateway, built from its spec: pure functions.

Applying is "make the live object contain what we built": ``contains`` says
whether it already does, so a re-run (or an operator restart) sends nothing.
The Deployment's ``replicas`` belongs to the autoscaler: it is set on creation
and afterwards only pulled back inside ``[min, max]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clarion import names
from clarion.config import default_of, option

from .spec import GatewaySpec, SecretRef

#: The gateway container listens here; the Service maps ``spec.service.port`` to it.
CONTAINER_PORT = 8080
#: The gateway's own drain timing (its defaults for ``clarion serve``).
DRAIN_DELAY = float(default_of("drain_delay"))
DRAIN_WINDOW = float(default_of("drain_window"))
#: preStop waits this long so endpoints drop the pod before it gets SIGTERM.
PRESTOP_SLEEP = 5
#: SIGKILL comes only after preStop + the gateway's drain delay and window + margin.
TERMINATION_GRACE = int(PRESTOP_SLEEP + DRAIN_DELAY + DRAIN_WINDOW + 10)


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


def container_env(spec: GatewaySpec) -> list[dict[str, Any]]:
    """What ``clarion serve`` reads, by the names its settings declare (``clarion.config``)."""
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    env: list[dict[str, Any]] = [
        {"name": option("pod_name").env, "valueFrom": pod_name},
        _value("host", "0.0.0.0"),
        _value("port", CONTAINER_PORT),
        _secret("amqp_url", spec.broker.url_secret_ref, optional=False),
        _value("exchange", spec.broker.exchange),
        _value("queue_prefix", spec.broker.queue_prefix),
        _value("auth", spec.auth.mode),
        _value("allow_client_publish", spec.auth.allow_client_publish),
        _value("drain_delay", DRAIN_DELAY),
        _value("drain_window", DRAIN_WINDOW),
    ]
    if spec.auth.mode == "jwt":
        env.append(_secret("jwt_secret", spec.auth.jwt_secret_ref, optional=False))
    env.append(_secret("api_keys", spec.auth.api_key_secret_ref, optional=True))
    env.append(_secret("admin_token", spec.auth.admin_token_secret_ref, optional=True))
    return env


def deployment(
    name: str,
    namespace: str,
    spec: GatewaySpec,
    owner: Mapping[str, Any],
    replicas: int | None,
) -> dict[str, Any]:
    """The gateway's Deployment; ``replicas=None`` leaves the live count to the autoscaler."""
    labels = names.gateway_labels(name)
    probe = {"port": names.HTTP_PORT_NAME}
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
            # Never take a pod away before its replacement is ready: each one holds sockets.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(CONTAINER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": TERMINATION_GRACE,
                    "containers": [
                        {
                            "name": "gateway",
                            "image": spec.image,
                            "command": ["clarion", "serve"],
                            "ports": [
                                {
                                    "name": names.HTTP_PORT_NAME,
                                    "containerPort": CONTAINER_PORT,
                                    "protocol": "TCP",
                                }
                            ],
                            "env": container_env(spec),
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", **probe},
                                "periodSeconds": 2,
                                "failureThreshold": 1,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", **probe},
                                "periodSeconds": 10,
                                "failureThreshold": 3,
                            },
                            "lifecycle": {
                                "preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP)]}}
                            },
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
                },
            },
        },
    }
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def service(
    name: str, namespace: str, spec: GatewaySpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """The Service in front of the gateway pods (plain round robin: no session affinity)."""
    labels = names.gateway_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "type": spec.service.type,
            "selector": labels,
            "ports": [
                {
                    "name": names.HTTP_PORT_NAME,
                    "port": spec.service.port,
                    "targetPort": names.HTTP_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def replicas_on_apply(existing: Mapping[str, Any] | None, spec: GatewaySpec) -> int | None:
    """Replicas to write when applying: min for a new Deployment, a clamp for a live one."""
    if existing is None:
        return spec.min_replicas
    current = existing.get("spec", {}).get("replicas")
    if not isinstance(current, int):
        return spec.min_replicas
    clamped = max(spec.min_replicas, min(spec.max_replicas, current))
    return None if clamped == current else clamped


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` already holds everything in ``wanted`` (extra live fields are fine).

    The API server adds defaults (protocols, pull policies, status); those must
    not make an idempotent re-apply look like a change.
    """
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)
