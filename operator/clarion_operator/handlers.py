"""kopf handlers: each reads the cluster, calls the pure deciders, applies what they say.

- ``apply``: on create / spec update / operator resume, make the Deployment and
  the two Services match the gateway's spec (``resources``).
- ``owned_event``: an owned Deployment or Service changed or went: apply again
  (a hand edit or a deletion is undone at once, not at the next restart).
- ``autoscale``: a daemon per gateway, every ``scaling.intervalSeconds``: one
  ``Autoscaler.tick`` (read the pods' connections, ``scaling.decide``, patch
  replicas, rebalance, write status).
- ``sweep``: a daemon per gateway, every ``queueCleanup.intervalSeconds``:
  delete pod queues whose pod is gone (``cleanup.sweep``).
- ``pod_event``: a gateway pod object is DELETED: delete its queue at once.

Daemons, not timers, because the interval comes from each gateway's spec.
Every handler is idempotent: run twice on the same cluster, the second run
writes nothing (deleting a queue that is gone already is a no-op).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from clarion import names

from . import applying, queues, resources
from . import status as gateway_status
from .autoscaler import Autoscaler
from .clients import GatewayPods
from .config import OperatorConfig
from .kube import Kube
from .metrics import OperatorMetrics
from .pods import PodView, parse_pod
from .spec import GatewaySpec

GATEWAY = (names.CRD_GROUP, names.CRD_VERSION, names.CRD_PLURAL)
GATEWAY_PODS = {names.LABEL_GATEWAY: kopf.PRESENT}
#: Kinds watched for gateway objects only, with a server-side label selector.
WATCHED_BY_LABEL = (("v1", "pods"), ("v1", "services"), ("apps", "deployments"))

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
    config: OperatorConfig | None = memo.get("config")
    if config is None:  # `kopf run -m clarion_operator`: no flags, only the environment
        try:
            config = OperatorConfig.from_env()
        except ValueError as exc:
            raise kopf.PermanentError(str(exc)) from None
    memo["config"] = config
    settings.posting.level = logging.INFO  # scale and cleanup events are worth seeing
    settings.persistence.finalizer = f"{names.CRD_GROUP}/operator"
    # Re-list now and then even if a watch stream silently stalls.
    settings.watching.server_timeout = 300
    # Ask the API server for gateway objects only: the handlers' labels= filter on
    # kopf's side, after every Pod, Service and Deployment event of the cluster
    # has reached this process (limited to 256 Mi).
    for resource in WATCHED_BY_LABEL:
        settings.watching.label_selectors[resource] = names.LABEL_GATEWAY
    memo["kube"] = await Kube.connect()
    memo["pods"] = GatewayPods(timeout=config.pod_timeout)
    # Shared by every per-gateway memo (they are shallow copies of this one):
    # set when the operator shuts down, so the daemons stop at once rather
    # than tick on closed clients until kopf cancels them.
    memo["closing"] = asyncio.Event()
    memo["apply_locks"] = defaultdict(asyncio.Lock)
    metrics = OperatorMetrics()
    metrics.serve(config.metrics_port)
    memo["metrics"] = metrics


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Close what startup opened: a restarted operator (tests) must not inherit sockets."""
    closing = memo.get("closing")
    if closing is not None:
        closing.set()
    for key, closer in (("kube", "close"), ("pods", "aclose"), ("metrics", "close")):
        obj = memo.get(key)
        if obj is not None:
            result = getattr(obj, closer)()
            if asyncio.iscoroutine(result):
                await result


def _closing(memo: kopf.Memo) -> bool:
    closing = memo.get("closing")
    return closing is not None and closing.is_set()


async def _rest(stopped: kopf.DaemonStopped, memo: kopf.Memo, seconds: float) -> None:
    """A daemon's pause between ticks: ``seconds``, or until it is stopped or the operator
    shuts down.

    kopf stops the daemons before it drains its watch queues, and an event drained then
    spawns them again with a stop flag it never sets. So the first daemon stopped for the
    operator's exit marks the whole operator as closing: a respawned daemon then ends at
    once instead of sleeping until kopf cancels it as a hung task (an error out of
    ``kopf run``; tests/operator/test_e2e_shutdown.py).
    """
    closing: asyncio.Event = memo["closing"]
    if not stopped and not closing.is_set():
        waiters = [
            asyncio.ensure_future(stopped.wait(seconds)),
            asyncio.ensure_future(closing.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    if stopped.reason is not None and kopf.DaemonStoppingReason.OPERATOR_EXITING in stopped.reason:
        closing.set()


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


# -- apply: Deployment and Services -------------------------------------------


async def apply_owned(
    kube: Kube,
    namespace: str,
    name: str,
    owner: Mapping[str, Any],
    gs: GatewaySpec,
    memo: kopf.Memo,
) -> list[str]:
    """Make each owned object what the spec says; what was created or patched.

    One gateway at a time: the owned-object watch and the spec handler may both
    want to create the same Service.
    """
    outcomes: list[str] = []
    async with memo["apply_locks"][namespace, name]:
        live_dep = await kube.get("Deployment", namespace, name)
        for kind, wanted in resources.owned(name, namespace, gs, owner, live_dep):
            obj = wanted["metadata"]["name"]
            live = live_dep if kind == "Deployment" else await kube.get(kind, namespace, obj)
            if live is None:
                await kube.create(kind, namespace, applying.recorded(wanted))
                outcomes.append(f"{kind} {obj} created")
                continue
            change = applying.plan(live, wanted)
            if change is not None:
                await kube.patch(kind, namespace, obj, change)
                outcomes.append(f"{kind} {obj} updated")
    return outcomes


def _report(body: kopf.Body, outcomes: list[str], logger: kopf.Logger) -> None:
    if outcomes:
        message = ", ".join(outcomes)
        kopf.info(body, reason="Applied", message=message)
        logger.info(message)


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
    """Make the owned Deployment and Services match the spec; touch nothing that already does."""
    namespace = namespace or ""
    try:
        gs = GatewaySpec.parse(spec)
    except ValueError as exc:  # the CRD refuses such specs; an older or absent schema may not
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    outcomes = await apply_owned(memo["kube"], namespace, name, body, gs, memo)
    _report(body, outcomes, logger)
    generation = body.get("metadata", {}).get("generation")
    patch.status.update(gateway_status.applied(status, generation, gateway_selector(name)))


def gateway_selector(name: str) -> str:
    """The pods' label selector, as the scale subresource reports it (``status.selector``)."""
    return ",".join(f"{k}={v}" for k, v in names.gateway_labels(name).items())


@kopf.index(*GATEWAY)
def gateway_owners(
    body: kopf.Body, namespace: str | None, name: str, uid: str | None, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """What an owner reference needs, for gateways that are not being deleted."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return {}
    return {(namespace or "", name): {"metadata": {"name": name, "uid": uid}}}


def _controller(body: Mapping[str, Any]) -> str | None:
    """The gateway that controls an owned object (its controller owner reference)."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == names.CRD_KIND and ref.get("controller"):
            return str(ref.get("name"))
    return None


@kopf.on.event("deployments", labels=GATEWAY_PODS)
@kopf.on.event("services", labels=GATEWAY_PODS)  # type: ignore[arg-type]
async def owned_event(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    gateway_specs: SpecIndex,
    gateway_owners: kopf.Index[tuple[str, str], dict[str, Any]],
    **_: Any,
) -> None:
    """An owned Deployment or Service was deleted or edited: make it what the spec says again.

    The event carries the object: one that still matches (a status or replicas
    change, the operator's own write) costs no API call.
    """
    if _closing(memo):
        return
    gateway = _controller(body) or body.get("metadata", {}).get("labels", {}).get(
        names.LABEL_GATEWAY
    )
    key = (namespace or "", str(gateway))
    gs: GatewaySpec | None = _first(gateway_specs.get(key))
    owner: dict[str, Any] | None = _first(gateway_owners.get(key))
    if gs is None or owner is None:
        return  # no such gateway (any more), or it is going: the garbage collector's turn
    if type != "DELETED":
        kind, obj = str(body.get("kind", "")), body.get("metadata", {}).get("name")
        live_dep = body if kind == "Deployment" else None
        wanted = {
            (k, w["metadata"]["name"]): w
            for k, w in resources.owned(key[1], key[0], gs, owner, live_dep)
        }.get((kind, obj))
        if wanted is None or applying.plan(body, wanted) is None:
            return
    outcomes = await apply_owned(memo["kube"], key[0], key[1], owner, gs, memo)
    if outcomes:
        logger.info("re-applied after a change to an owned object: " + ", ".join(outcomes))


# -- autoscaling ---------------------------------------------------------------


# kopf passes each index by its handler's name; its handler protocols do not
# list such keywords, hence the ``type: ignore`` on the handlers that take one.
@kopf.daemon(*GATEWAY, cancellation_timeout=5.0)  # type: ignore[arg-type]
async def autoscale(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    gateway_pods: PodIndex,
    **_: Any,
) -> None:
    """Every ``scaling.intervalSeconds`` (read afresh from the live spec): one scaling tick."""
    namespace = namespace or ""
    scaler = Autoscaler(namespace, name, memo["kube"], memo["pods"], memo["metrics"], logger)
    while not stopped and not _closing(memo):
        gs = GatewaySpec.parse(body.get("spec", {}))
        try:
            await scaler.tick(body, gs, list(gateway_pods.get((namespace, name), [])))
        except Exception as exc:  # a bad tick must not end the daemon
            logger.warning(f"autoscaling tick failed: {exc!r}")
        await _rest(stopped, memo, gs.scaling.interval_seconds)


# -- queue cleanup -------------------------------------------------------------


@kopf.daemon(*GATEWAY, cancellation_timeout=5.0)  # type: ignore[arg-type]
async def sweep(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    gateway_pods: PodIndex,
    **_: Any,
) -> None:
    """Every ``queueCleanup.intervalSeconds``: delete pod queues whose pod is gone."""
    sweeper = queues.Sweeper(namespace or "", name, memo["kube"], memo["metrics"], logger)
    while not stopped and not _closing(memo):
        gs = GatewaySpec.parse(body.get("spec", {}))
        try:
            await sweeper.sweep(body, gs, gateway_pods)
        except Exception as exc:  # a failed sweep must not end the daemon
            logger.warning(f"queue sweep failed: {exc!r}")
        await _rest(stopped, memo, gs.queue_cleanup.interval_seconds)


@kopf.on.event("pods", labels=GATEWAY_PODS)  # type: ignore[arg-type]
async def pod_event(
    type: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    gateway_specs: SpecIndex,
    **_: Any,
) -> None:
    """A gateway pod object is gone: its process is gone too, so delete its queue now.

    A terminating pod (``deletionTimestamp`` set) is still draining and still
    reads its queue: it is left alone until the DELETED event.
    """
    if type != "DELETED":
        return
    pod = parse_pod(body)
    gs: GatewaySpec | None = _first(gateway_specs.get((pod.namespace, pod.gateway)))
    if gs is None:
        return  # no such gateway (any more): not ours to clean
    await queues.delete_queue_of(pod, gs, memo["kube"], memo["metrics"], logger)
