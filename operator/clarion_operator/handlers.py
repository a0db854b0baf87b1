"""kopf handlers: short functions that read the cluster, call the pure deciders, apply.

- ``apply``: on create / spec update / operator resume, make the Deployment and
  Service match the gateway's spec.
- ``autoscale``: a daemon per gateway, every ``scaling.intervalSeconds``: read
  ``clarion_connections`` from each serving pod, decide (``scaling.decide``),
  patch the Deployment's replicas, rebalance, write status.
- ``sweep``: a daemon per gateway, every ``queueCleanup.intervalSeconds``:
  delete pod queues whose pod is gone (``cleanup.sweep``).
- ``pod_event``: a gateway pod object is DELETED: delete its queue at once.

Daemons, not timers, because the interval comes from each gateway's spec.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import httpx
import kopf
from prometheus_client.parser import text_string_to_metric_families

from clarion import names

from . import cleanup, rebalance, resources, scaling
from .config import OperatorConfig
from .kube import Kube
from .metrics import OperatorMetrics
from .pods import PodView, parse_pod
from .rabbitmq import Management, vhost_of
from .spec import GatewaySpec
from .status import DEPLOYED, SCALING_ACTIVE, changed, now_iso, set_condition

GATEWAY = (names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL)
GATEWAY_PODS = {names.LABEL_GATEWAY: kopf.PRESENT}

PodIndex = kopf.Index[tuple[str, str], PodView]
SpecIndex = kopf.Index[tuple[str, str], GatewaySpec]


# -- startup / cleanup ---------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig named by ``KUBECONFIG`` at start time."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Open the clients the handlers share, and tune kopf for this operator."""
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    memo["config"] = config
    settings.posting.level = logging.INFO  # scale and cleanup events are worth seeing
    settings.persistence.finalizer = f"{names.CRD_GROUP}/operator"
    # Re-list now and then even if a watch stream silently stalls.
    settings.watching.server_timeout = 300
    memo["kube"] = await Kube.connect()
    memo["http"] = httpx.AsyncClient(timeout=config.pod_timeout)
    # Shared by every per-gateway memo (they are shallow copies of this one):
    # set when the operator shuts down, so the daemons stop at once rather
    # than tick on closed clients until kopf cancels them.
    memo["closing"] = asyncio.Event()
    metrics = OperatorMetrics()
    metrics.serve(config.metrics_port)
    memo["metrics"] = metrics


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Close what startup opened: a restarted operator (tests) must not inherit sockets."""
    closing = memo.get("closing")
    if closing is not None:
        closing.set()
    for key, closer in (("kube", "close"), ("http", "aclose"), ("metrics", "close")):
        obj = memo.get(key)
        if obj is not None:
            result = getattr(obj, closer)()
            if asyncio.iscoroutine(result):
                await result


# -- indexes: what the handlers look up instead of listing ------------------


@kopf.index("pods", labels=GATEWAY_PODS)
def gateway_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[tuple[str, str], PodView]:
    """Every gateway pod that exists, by (namespace, gateway): starting, serving, terminating."""
    view = parse_pod(body)
    return {(namespace or "", view.gateway): view}


@kopf.index(*GATEWAY)
def gateway_specs(
    spec: kopf.Spec, namespace: str | None, name: str, **_: Any
) -> dict[tuple[str, str], GatewaySpec]:
    return {(namespace or "", name): GatewaySpec.parse(spec)}


def _first(store: Iterable[Any] | None) -> Any:
    for item in store or ():
        return item
    return None


# -- apply: Deployment and Service -------------------------------------------


@kopf.on.resume(*GATEWAY)
@kopf.on.create(*GATEWAY)
@kopf.on.update(*GATEWAY, field="spec")
async def apply(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Make the owned Deployment and Service match the spec; touch nothing that already does."""
    namespace = namespace or ""
    kube: Kube = memo["kube"]
    gs = GatewaySpec.parse(spec)
    outcomes: list[str] = []
    for kind in ("Deployment", "Service"):
        live = await kube.get(kind, namespace, name)
        if kind == "Deployment":
            wanted = resources.deployment(
                name, namespace, gs, body, resources.replicas_on_apply(live, gs)
            )
        else:
            wanted = resources.service(name, namespace, gs, body)
        if live is None:
            await kube.create(kind, namespace, wanted)
            outcomes.append(f"{kind} created")
        elif not resources.contains(live, wanted):
            await kube.patch(kind, namespace, name, wanted)
            outcomes.append(f"{kind} updated")
    message = ", ".join(outcomes) or "Deployment and Service up to date"
    if outcomes:
        kopf.info(body, reason="Applied", message=message)
        logger.info(message)
    conditions = set_condition(
        status.get("conditions"), DEPLOYED, True, "Applied", "Deployment and Service match the spec"
    )
    if conditions != status.get("conditions"):
        patch.status["conditions"] = conditions


# -- autoscaling ---------------------------------------------------------------


async def read_connections(http: httpx.AsyncClient, pod: PodView) -> int | None:
    """``clarion_connections`` of one pod; None when it cannot be read (never a guess)."""
    try:
        r = await http.get(pod.metrics_url)
        r.raise_for_status()
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == names.M_CONNECTIONS:
                    return int(sample.value)
    except (httpx.HTTPError, ValueError):
        return None
    return None


async def shed(
    http: httpx.AsyncClient, pods: Mapping[str, PodView], plan: Mapping[str, int], token: str
) -> dict[str, int]:
    """Ask each pod in the plan to close that many sockets; what each one really closed."""

    async def one(pod: PodView, count: int) -> int:
        try:
            r = await http.post(
                f"{pod.base_url}/admin/shed",
                json={"count": count},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
            return int(r.json().get("shed", 0))
        except (httpx.HTTPError, ValueError):
            return 0

    done = await asyncio.gather(*(one(pods[p], n) for p, n in plan.items()))
    return dict(zip(plan, done, strict=True))


class Autoscaler:
    """One gateway's autoscaler: the state between ticks lives here, in memory only."""

    def __init__(self, namespace: str, name: str, memo: kopf.Memo, logger: kopf.Logger) -> None:
        self.namespace = namespace
        self.name = name
        self.kube: Kube = memo["kube"]
        self.http: httpx.AsyncClient = memo["http"]
        self.metrics: OperatorMetrics = memo["metrics"]
        self.logger = logger
        self.state = scaling.State(since=time.monotonic())
        self.last_rebalance: float | None = None
        self.key = OperatorMetrics.key(namespace, name)

    async def tick(self, body: kopf.Body, gs: GatewaySpec, pods: Iterable[PodView]) -> None:
        deployment = await self.kube.get("Deployment", self.namespace, self.name)
        if deployment is None:
            return  # `apply` creates it; nothing to scale yet
        replicas = deployment.get("spec", {}).get("replicas")
        current = 1 if replicas is None else int(replicas)  # the API server's default
        serving = {p.name: p for p in pods if p.serving}
        readings = dict(
            zip(
                serving,
                await asyncio.gather(*(read_connections(self.http, p) for p in serving.values())),
                strict=True,
            )
        )
        policy = scaling.Policy(
            gs.min_replicas,
            gs.max_replicas,
            gs.scaling.target_connections_per_pod,
            gs.scaling.scale_up_stabilization_seconds,
            gs.scaling.scale_down_stabilization_seconds,
            gs.scaling.max_scale_down_step,
        )
        now = time.monotonic()
        decision = scaling.decide(current, list(readings.values()), now, self.state, policy)
        self.state = decision.state
        total = sum(v for v in readings.values() if v is not None)
        known = decision.recommendation is not None
        self.metrics.observed.labels(self.key).set(total)
        self.metrics.desired.labels(self.key).set(decision.replicas)

        status = body.get("status", {})
        wanted: dict[str, Any] = {
            "connections": total,
            "desiredReplicas": decision.recommendation if known else decision.replicas,
            "replicas": decision.replicas,
            "readyReplicas": int(deployment.get("status", {}).get("readyReplicas") or len(serving)),
        }
        direction = decision.direction(current)
        if direction is not None:
            await self.kube.patch(
                "Deployment", self.namespace, self.name, {"spec": {"replicas": decision.replicas}}
            )
            self.metrics.scale_events.labels(self.key, direction).inc()
            wanted["lastScaleTime"] = now_iso()
            message = f"{current} -> {decision.replicas} replicas: {decision.reason}"
            kopf.info(body, reason="Scaled", message=message)
            self.logger.info(message)
        elif known and gs.scaling.rebalance:
            await self.rebalance(body, gs, serving, readings, current, now)

        wanted["conditions"] = set_condition(
            status.get("conditions"),
            SCALING_ACTIVE,
            known,
            "MetricsRead" if known else "MetricsUnknown",
            decision.reason,
        )
        delta = changed(status, wanted)
        if delta:
            await self.kube.patch_gateway_status(self.namespace, self.name, delta)

    async def rebalance(
        self,
        body: kopf.Body,
        gs: GatewaySpec,
        serving: Mapping[str, PodView],
        readings: Mapping[str, int | None],
        current: int,
        now: float,
    ) -> None:
        """Spread sockets once the Deployment has settled (every wanted pod is serving)."""
        if len(serving) != current or not rebalance.due(
            now, self.last_rebalance, gs.scaling.interval_seconds
        ):
            return
        plan = rebalance.shed_plan({p: c for p, c in readings.items() if c is not None})
        if not plan:
            return
        token = await self.kube.secret_value(self.namespace, gs.auth.admin_token_secret_ref)
        if not token:
            self.logger.warning("pods are unbalanced but no admin token secret: not rebalancing")
            self.last_rebalance = now
            return
        done = await shed(self.http, serving, plan, token)
        self.last_rebalance = now
        message = "asked pods to shed sockets: " + ", ".join(f"{p}={n}" for p, n in done.items())
        kopf.info(body, reason="Rebalanced", message=message)
        self.logger.info(message)


def _closing(memo: kopf.Memo) -> bool:
    closing = memo.get("closing")
    return closing is not None and closing.is_set()


@kopf.daemon(*GATEWAY, cancellation_timeout=5.0)
async def autoscale(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Every ``scaling.intervalSeconds`` (read afresh from the live spec): one scaling tick."""
    namespace = namespace or ""
    scaler = Autoscaler(namespace, name, memo, logger)
    while not stopped and not _closing(memo):
        gs = GatewaySpec.parse(body.get("spec", {}))
        try:
            index: PodIndex = kwargs["gateway_pods"]
            await scaler.tick(body, gs, list(index.get((namespace, name), [])))
        except Exception as exc:  # a bad tick must not end the daemon
            logger.warning(f"autoscaling tick failed: {exc!r}")
        await stopped.wait(gs.scaling.interval_seconds)


# -- queue cleanup -------------------------------------------------------------


async def broker_access(kube: Kube, namespace: str, gs: GatewaySpec) -> tuple[str, str] | None:
    """(management URL, vhost) of a gateway's broker, from its Secrets; None if missing."""
    mgmt = await kube.secret_value(namespace, gs.broker.management_url_secret_ref)
    amqp = await kube.secret_value(namespace, gs.broker.url_secret_ref)
    if not mgmt or not amqp:
        return None
    return mgmt, vhost_of(amqp)


async def count_orphans(
    kube: Kube, metrics: OperatorMetrics, namespace: str, name: str, deleted: int
) -> None:
    """Add to the gateway's ``status.orphanQueuesDeleted`` and the operator metric."""
    if deleted <= 0:
        return
    metrics.orphans_deleted.labels(OperatorMetrics.key(namespace, name)).inc(deleted)
    gateway = await kube.get_gateway(namespace, name)
    if gateway is None:
        return
    before = int((gateway.get("status") or {}).get("orphanQueuesDeleted") or 0)
    await kube.patch_gateway_status(namespace, name, {"orphanQueuesDeleted": before + deleted})


def live_pod_names(index: PodIndex) -> set[str]:
    """Names of every gateway pod object that exists, in any watched namespace."""
    return {pod.name for store in index.values() for pod in store}


@kopf.daemon(*GATEWAY, cancellation_timeout=5.0)
async def sweep(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Every ``queueCleanup.intervalSeconds``: delete pod queues whose pod is gone."""
    namespace = namespace or ""
    kube: Kube = memo["kube"]
    first_seen: dict[str, float] = {}
    while not stopped and not _closing(memo):
        gs = GatewaySpec.parse(body.get("spec", {}))
        try:
            first_seen = await sweep_once(
                kube, memo, namespace, name, body, gs, kwargs["gateway_pods"], first_seen, logger
            )
        except Exception as exc:
            logger.warning(f"queue sweep failed: {exc!r}")
        await stopped.wait(gs.queue_cleanup.interval_seconds)


async def sweep_once(
    kube: Kube,
    memo: kopf.Memo,
    namespace: str,
    name: str,
    body: kopf.Body,
    gs: GatewaySpec,
    index: PodIndex,
    first_seen: dict[str, float],
    logger: kopf.Logger,
) -> dict[str, float]:
    access = await broker_access(kube, namespace, gs)
    if access is None:
        logger.warning("broker secrets missing: cannot sweep queues")
        return first_seen
    url, vhost = access
    async with Management(url) as mgmt:
        queues = await mgmt.queues(vhost, gs.broker.queue_prefix)
        # The pod set is read after the queue list: a pod that appears meanwhile is live.
        result = cleanup.sweep(
            queues,
            live_pod_names(index),
            first_seen,
            time.monotonic(),
            gs.queue_cleanup.grace_seconds,
            gs.broker.queue_prefix,
        )
        deleted = [q for q in result.delete if await mgmt.delete_queue(vhost, q)]
    if deleted:
        message = f"deleted orphan queues: {', '.join(deleted)}"
        kopf.info(body, reason="QueuesSwept", message=message)
        logger.info(message)
        await count_orphans(kube, memo["metrics"], namespace, name, len(deleted))
    return result.first_seen


@kopf.on.event("pods", labels=GATEWAY_PODS)
async def pod_event(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A gateway pod object is gone: its process is gone too, so delete its queue now.

    A terminating pod (``deletionTimestamp`` set) is still draining and still
    reads its queue: it is left alone until the DELETED event.
    """
    if type != "DELETED":
        return
    namespace = namespace or ""
    pod = parse_pod(body)
    specs: SpecIndex = kwargs["gateway_specs"]
    gs: GatewaySpec | None = _first(specs.get((namespace, pod.gateway)))
    if gs is None:
        return  # no such gateway (any more): not ours to clean
    kube: Kube = memo["kube"]
    access = await broker_access(kube, namespace, gs)
    if access is None:
        logger.warning(
            f"pod {pod.name} is gone but the broker secrets are missing: the sweep will retry"
        )
        return
    url, vhost = access
    queue = cleanup.queue_of_deleted_pod(pod.name, gs.broker.queue_prefix)
    async with Management(url) as mgmt:
        deleted = await mgmt.delete_queue(vhost, queue)
    if deleted:
        logger.info(f"pod {pod.name} is gone: deleted its queue {queue}")
        gateway = await kube.get_gateway(namespace, pod.gateway)
        if gateway is not None:
            kopf.info(
                kopf.Body(cast(Any, gateway)),
                reason="QueueDeleted",
                message=f"pod {pod.name} gone: deleted {queue}",
            )
        await count_orphans(kube, memo["metrics"], namespace, pod.gateway, 1)
