"""The WebSocketGateway spec as typed values, with the same defaults as the CRD.

The API server applies the CRD's defaults, but an operator must not rely on it
(an older CRD, a test emulator): every read goes through ``GatewaySpec.parse``,
which fills in what is missing. A test checks these defaults against the CRD.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clarion import names
from clarion.config import default_of, option
from clarion.namespaces import Namespaces


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


#: The Secrets a Helm release named ``clarion`` (the documented install) creates.
BROKER_SECRET = "clarion-rabbitmq"
AUTH_SECRET = "clarion-auth"


@dataclass(frozen=True)
class BrokerSpec:
    #: Empty: the gateway's own exchange, ``clarion.gw.<namespace>.<name>`` (``exchange_of``).
    exchange: str = ""
    queue_prefix: str = names.QUEUE_PREFIX
    url_secret_ref: SecretRef = SecretRef(BROKER_SECRET, "url")
    management_url_secret_ref: SecretRef = SecretRef(BROKER_SECRET, "managementUrl")
    #: The gateway's ``--routing``: ``fanout`` (every pod gets every message) or ``direct``.
    routing: str = default_of("routing")


@dataclass(frozen=True)
class AuthSpec:
    mode: str = "jwt"
    jwt_secret_ref: SecretRef = SecretRef(AUTH_SECRET, "jwtSecret")
    api_key_secret_ref: SecretRef = SecretRef(AUTH_SECRET, "apiKeys")
    admin_token_secret_ref: SecretRef = SecretRef(AUTH_SECRET, "adminToken")
    allow_client_publish: bool = False
    #: The publish API takes requests without a key (the gateway's ``--public-api``).
    public_api: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    type: str = "ClusterIP"
    port: int = 80
    annotations: dict[str, str] = field(default_factory=dict)
    load_balancer_source_ranges: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeSpec:
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int

    @classmethod
    def parse(cls, raw: Any, default: ProbeSpec) -> ProbeSpec:
        raw = raw if isinstance(raw, Mapping) else {}
        return cls(
            int(raw.get("periodSeconds", default.period_seconds)),
            int(raw.get("timeoutSeconds", default.timeout_seconds)),
            int(raw.get("failureThreshold", default.failure_threshold)),
        )

    def crd(self) -> dict[str, int]:
        return {
            "periodSeconds": self.period_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "failureThreshold": self.failure_threshold,
        }


#: A pod holding thousands of sockets can answer slowly in a connect storm: one slow
#: answer must not take it out (readiness) or restart it (liveness).
READINESS = ProbeSpec(period_seconds=5, timeout_seconds=3, failure_threshold=3)
LIVENESS = ProbeSpec(period_seconds=10, timeout_seconds=5, failure_threshold=6)


@dataclass(frozen=True)
class PodSpec:
    """What platform teams set on every workload; passed through to the pod template as is."""

    image_pull_secrets: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)
    #: None: spread the pods over nodes (``resources.default_spread``); empty: no constraint.
    topology_spread_constraints: tuple[dict[str, Any], ...] | None = None
    priority_class_name: str = ""
    #: Empty: the namespace's ``default`` account.
    service_account_name: str = ""
    #: Gateway pods never call the Kubernetes API: no token unless asked for.
    automount_service_account_token: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    max_surge: int | str = "25%"
    max_unavailable: int | str = 0
    readiness: ProbeSpec = READINESS
    liveness: ProbeSpec = LIVENESS
    #: ``prometheus.io/*`` annotations on the pods; off when a ServiceMonitor scrapes them.
    scrape_annotations: bool = True


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
    pod: PodSpec = PodSpec()
    #: ``spec.namespaces`` as the gateway's ``--namespaces`` JSON ("": none declared).
    namespaces: str = ""

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> GatewaySpec:
        """Typed values from the raw (possibly sparse) spec; missing fields get defaults."""

        def sub(key: str) -> Mapping[str, Any]:
            value = spec.get(key)
            return value if isinstance(value, Mapping) else {}

        rep, sc, qc, br, au, sv, pr, st, mo = (
            sub(k)
            for k in (
                "replicas",
                "scaling",
                "queueCleanup",
                "broker",
                "auth",
                "service",
                "probes",
                "strategy",
                "metrics",
            )
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
                routing=_setting("broker.routing", "routing", br.get("routing", d_br.routing)),
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
                public_api=bool(au.get("publicApi", d_au.public_api)),
            ),
            service=ServiceSpec(
                type=str(sv.get("type", d_sv.type)),
                port=int(sv.get("port", d_sv.port)),
                annotations=_strings(sv.get("annotations")),
                load_balancer_source_ranges=tuple(
                    str(r) for r in sv.get("loadBalancerSourceRanges") or ()
                ),
            ),
            resources=_plain(resources)
            if isinstance(resources, Mapping)
            else dict(DEFAULT_RESOURCES),
            read_only_root_filesystem=bool(spec.get("readOnlyRootFilesystem", True)),
            pod=_parse_pod(spec, pr, st, mo),
            namespaces=_namespaces(spec.get("namespaces")),
        )


def _setting(field_path: str, setting: str, raw: Any) -> str:
    """A field that is one of the gateway's settings, checked by that setting's own parser."""
    try:
        return str(option(setting).parse(str(raw)))
    except ValueError as exc:
        raise ValueError(f"spec.{field_path}: {exc}") from None


def _namespaces(raw: Any) -> str:
    """``spec.namespaces`` (namespace name -> options) as ``--namespaces`` JSON, checked by the
    gateway's own parser: a bad one names the namespace and the option, as the pod would."""
    if not raw:
        return ""
    if not isinstance(raw, Mapping):
        raise ValueError("spec.namespaces: must be an object (namespace name -> options)")
    value = json.dumps(_plain(raw), sort_keys=True, separators=(",", ":"))
    try:
        Namespaces.parse(value)
    except ValueError as exc:
        raise ValueError(f"spec.namespaces: {str(exc).removeprefix('--namespaces: ')}") from None
    return value


def _strings(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _objects(raw: Any) -> tuple[dict[str, Any], ...]:
    return tuple(_plain(v) for v in raw or () if isinstance(v, Mapping))


def _parse_pod(
    spec: Mapping[str, Any],
    probes: Mapping[str, Any],
    strategy: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> PodSpec:
    d = PodSpec()
    spread = spec.get("topologySpreadConstraints")
    affinity = spec.get("affinity")
    return PodSpec(
        image_pull_secrets=tuple(
            str(s.get("name")) for s in spec.get("imagePullSecrets") or () if s.get("name")
        ),
        env=_objects(spec.get("env")),
        node_selector=_strings(spec.get("nodeSelector")),
        tolerations=_objects(spec.get("tolerations")),
        affinity=_plain(affinity) if isinstance(affinity, Mapping) else {},
        topology_spread_constraints=None if spread is None else _objects(spread),
        priority_class_name=str(spec.get("priorityClassName") or ""),
        service_account_name=str(spec.get("serviceAccountName") or ""),
        automount_service_account_token=bool(
            spec.get("automountServiceAccountToken", d.automount_service_account_token)
        ),
        annotations=_strings(spec.get("podAnnotations")),
        labels=_strings(spec.get("podLabels")),
        max_surge=_int_or_str(strategy.get("maxSurge", d.max_surge)),
        max_unavailable=_int_or_str(strategy.get("maxUnavailable", d.max_unavailable)),
        readiness=ProbeSpec.parse(probes.get("readiness"), d.readiness),
        liveness=ProbeSpec.parse(probes.get("liveness"), d.liveness),
        scrape_annotations=bool(metrics.get("scrapeAnnotations", d.scrape_annotations)),
    )


def _int_or_str(value: Any) -> int | str:
    return value if isinstance(value, int) and not isinstance(value, bool) else str(value)


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
            "routing": s.broker.routing,
        },
        "auth": {
            "mode": s.auth.mode,
            "jwtSecretRef": ref(s.auth.jwt_secret_ref),
            "apiKeySecretRef": ref(s.auth.api_key_secret_ref),
            "adminTokenSecretRef": ref(s.auth.admin_token_secret_ref),
            "allowClientPublish": s.auth.allow_client_publish,
            "publicApi": s.auth.public_api,
        },
        "service": {"type": s.service.type, "port": s.service.port},
        "resources": DEFAULT_RESOURCES,
        "readOnlyRootFilesystem": s.read_only_root_filesystem,
        "automountServiceAccountToken": s.pod.automount_service_account_token,
        "strategy": {"maxSurge": s.pod.max_surge, "maxUnavailable": s.pod.max_unavailable},
        "probes": {"readiness": s.pod.readiness.crd(), "liveness": s.pod.liveness.crd()},
        "metrics": {"scrapeAnnotations": s.pod.scrape_annotations},
    }
