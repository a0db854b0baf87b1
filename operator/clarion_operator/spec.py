"""The WebSocketGateway spec as typed values, with the same defaults as the CRD.

The API server applies the CRD's defaults, but an operator must not rely on it
(an older CRD, a test emulator): every read goes through ``GatewaySpec.parse``,
which fills in what is missing. A test checks these defaults against the CRD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clarion import names


@dataclass(frozen=True)
class SecretRef:
    """``{name, key}`` of a Secret in the gateway's namespace."""

    name: str
    key: str

    @classmethod
    def parse(cls, raw: Any, default: SecretRef) -> SecretRef:
        raw = raw if isinstance(raw, Mapping) else {}
        return cls(str(raw.get("name", default.name)), str(raw.get("key", default.key)))


@dataclass(frozen=True)
class ScalingSpec:
    target_connections_per_pod: int = 5000
    interval_seconds: float = 15
    scale_up_stabilization_seconds: float = 0
    scale_down_stabilization_seconds: float = 300
    max_scale_down_step: int = 1
    rebalance: bool = True


@dataclass(frozen=True)
class CleanupSpec:
    interval_seconds: float = 60
    grace_seconds: float = 120


@dataclass(frozen=True)
class BrokerSpec:
    exchange: str = names.EXCHANGE
    queue_prefix: str = names.QUEUE_PREFIX
    url_secret_ref: SecretRef = SecretRef("rabbitmq", "url")
    management_url_secret_ref: SecretRef = SecretRef("rabbitmq", "managementUrl")


@dataclass(frozen=True)
class AuthSpec:
    mode: str = "jwt"
    jwt_secret_ref: SecretRef = SecretRef("clarion-auth", "jwtSecret")
    api_key_secret_ref: SecretRef = SecretRef("clarion-auth", "apiKeys")
    admin_token_secret_ref: SecretRef = SecretRef("clarion-auth", "adminToken")
    allow_client_publish: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    type: str = "ClusterIP"
    port: int = 80


DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


@dataclass(frozen=True)
class GatewaySpec:
    image: str
    min_replicas: int = 2
    max_replicas: int = 20
    scaling: ScalingSpec = ScalingSpec()
    queue_cleanup: CleanupSpec = CleanupSpec()
    broker: BrokerSpec = BrokerSpec()
    auth: AuthSpec = AuthSpec()
    service: ServiceSpec = ServiceSpec()
    resources: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    #: Off only for development (Tilt's live update writes into the container).
    read_only_root_filesystem: bool = True

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> GatewaySpec:
        """Typed values from the raw (possibly sparse) spec; missing fields get defaults."""

        def sub(key: str) -> Mapping[str, Any]:
            value = spec.get(key)
            return value if isinstance(value, Mapping) else {}

        rep, sc, qc, br, au, sv = (
            sub(k) for k in ("replicas", "scaling", "queueCleanup", "broker", "auth", "service")
        )
        d_sc, d_qc, d_br, d_au, d_sv = (
            ScalingSpec(),
            CleanupSpec(),
            BrokerSpec(),
            AuthSpec(),
            ServiceSpec(),
        )
        resources = spec.get("resources")
        return cls(
            image=str(spec.get("image", "")),
            min_replicas=int(rep.get("min", cls.min_replicas)),
            max_replicas=int(rep.get("max", cls.max_replicas)),
            scaling=ScalingSpec(
                target_connections_per_pod=int(
                    sc.get("targetConnectionsPerPod", d_sc.target_connections_per_pod)
                ),
                interval_seconds=float(sc.get("intervalSeconds", d_sc.interval_seconds)),
                scale_up_stabilization_seconds=float(
                    sc.get("scaleUpStabilizationSeconds", d_sc.scale_up_stabilization_seconds)
                ),
                scale_down_stabilization_seconds=float(
                    sc.get("scaleDownStabilizationSeconds", d_sc.scale_down_stabilization_seconds)
                ),
                max_scale_down_step=int(sc.get("maxScaleDownStep", d_sc.max_scale_down_step)),
                rebalance=bool(sc.get("rebalance", d_sc.rebalance)),
            ),
            queue_cleanup=CleanupSpec(
                interval_seconds=float(qc.get("intervalSeconds", d_qc.interval_seconds)),
                grace_seconds=float(qc.get("graceSeconds", d_qc.grace_seconds)),
            ),
            broker=BrokerSpec(
                exchange=str(br.get("exchange", d_br.exchange)),
                queue_prefix=str(br.get("queuePrefix", d_br.queue_prefix)),
                url_secret_ref=SecretRef.parse(br.get("urlSecretRef"), d_br.url_secret_ref),
                management_url_secret_ref=SecretRef.parse(
                    br.get("managementUrlSecretRef"), d_br.management_url_secret_ref
                ),
            ),
            auth=AuthSpec(
                mode=str(au.get("mode", d_au.mode)),
                jwt_secret_ref=SecretRef.parse(au.get("jwtSecretRef"), d_au.jwt_secret_ref),
                api_key_secret_ref=SecretRef.parse(
                    au.get("apiKeySecretRef"), d_au.api_key_secret_ref
                ),
                admin_token_secret_ref=SecretRef.parse(
                    au.get("adminTokenSecretRef"), d_au.admin_token_secret_ref
                ),
                allow_client_publish=bool(au.get("allowClientPublish", d_au.allow_client_publish)),
            ),
            service=ServiceSpec(
                type=str(sv.get("type", d_sv.type)), port=int(sv.get("port", d_sv.port))
            ),
            resources=_plain(resources)
            if isinstance(resources, Mapping)
            else dict(DEFAULT_RESOURCES),
            read_only_root_filesystem=bool(spec.get("readOnlyRootFilesystem", True)),
        )


def _plain(value: Any) -> Any:
    """A deep plain-dict copy of kopf's mapping views (they are not JSON-serialisable dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def defaults_as_crd() -> dict[str, Any]:
    """The defaults in the CRD's camelCase shape, for the consistency test."""
    s = GatewaySpec(image="")
    ref = lambda r: {"name": r.name, "key": r.key}  # noqa: E731
    return {
        "replicas": {"min": s.min_replicas, "max": s.max_replicas},
        "scaling": {
            "targetConnectionsPerPod": s.scaling.target_connections_per_pod,
            "intervalSeconds": s.scaling.interval_seconds,
            "scaleUpStabilizationSeconds": s.scaling.scale_up_stabilization_seconds,
            "scaleDownStabilizationSeconds": s.scaling.scale_down_stabilization_seconds,
            "maxScaleDownStep": s.scaling.max_scale_down_step,
            "rebalance": s.scaling.rebalance,
        },
        "queueCleanup": {
            "intervalSeconds": s.queue_cleanup.interval_seconds,
            "graceSeconds": s.queue_cleanup.grace_seconds,
        },
        "broker": {
            "exchange": s.broker.exchange,
            "queuePrefix": s.broker.queue_prefix,
            "urlSecretRef": ref(s.broker.url_secret_ref),
            "managementUrlSecretRef": ref(s.broker.management_url_secret_ref),
        },
        "auth": {
            "mode": s.auth.mode,
            "jwtSecretRef": ref(s.auth.jwt_secret_ref),
            "apiKeySecretRef": ref(s.auth.api_key_secret_ref),
            "adminTokenSecretRef": ref(s.auth.admin_token_secret_ref),
            "allowClientPublish": s.auth.allow_client_publish,
        },
        "service": {"type": s.service.type, "port": s.service.port},
        "resources": DEFAULT_RESOURCES,
        "readOnlyRootFilesystem": s.read_only_root_filesystem,
    }
