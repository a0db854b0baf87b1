"""Deleting dead pods' queues on the broker: the periodic sweep and the pod-deletion path.

Which queues are orphans is decided by ``cleanup`` (pure functions); this
module reads the broker's Secrets, lists and deletes through the management
API, and counts what went in the gateway's status and the operator's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from . import cleanup
from . import status as gateway_status
from .clients import Management, vhost_of
from .kube import Kube
from .metrics import OperatorMetrics
from .pods import PodView
from .spec import GatewaySpec


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
    """Add to the gateway's ``status.orphanQueuesDeleted`` and the operator metric.

    The count is read fresh and written under ``Kube``'s per-gateway lock, so
    the sweep and the pod-deletion handler counting at the same moment both count.
    """
    if deleted <= 0:
        return
    metrics.orphans_deleted.labels(OperatorMetrics.key(namespace, name)).inc(deleted)
    await kube.update_gateway_status(
        namespace, name, lambda status: gateway_status.orphans_counted(status, deleted)
    )


def live_pod_names(index: Mapping[Any, Iterable[PodView]]) -> set[str]:
    """Names of every gateway pod object that exists, in any watched namespace."""
    return {pod.name for store in index.values() for pod in store}


class Sweeper:
    """One gateway's sweep: the orphan candidates seen so far live here, in memory only."""

    def __init__(
        self, namespace: str, name: str, kube: Kube, metrics: OperatorMetrics, logger: kopf.Logger
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.kube = kube
        self.metrics = metrics
        self.logger = logger
        self.first_seen: dict[str, float] = {}

    async def sweep(
        self, body: kopf.Body, gs: GatewaySpec, pods: Mapping[Any, Iterable[PodView]]
    ) -> None:
        """List the gateway's pod queues, delete the orphans past their grace."""
        access = await broker_access(self.kube, self.namespace, gs)
        if access is None:
            self.logger.warning("broker secrets missing: cannot sweep queues")
            return
        url, vhost = access
        prefix = gs.broker.queue_prefix
        async with Management(url) as mgmt:
            queues = await mgmt.queues(vhost, prefix)
            # The pod set is read after the queue list: a pod that appears meanwhile is live.
            live = live_pod_names(pods)
            grace = gs.queue_cleanup.grace_seconds
            result = cleanup.sweep(queues, live, self.first_seen, time.monotonic(), grace, prefix)
            deleted = [q for q in result.delete if await mgmt.delete_queue(vhost, q)]
        self.first_seen = result.first_seen
        if deleted:
            message = f"deleted orphan queues: {', '.join(deleted)}"
            kopf.info(body, reason="QueuesSwept", message=message)
            self.logger.info(message)
            await count_orphans(self.kube, self.metrics, self.namespace, self.name, len(deleted))


async def delete_queue_of(
    pod: PodView, gs: GatewaySpec, kube: Kube, metrics: OperatorMetrics, logger: kopf.Logger
) -> None:
    """The pod object is gone, so its process is: delete its queue (gone already: nothing)."""
    access = await broker_access(kube, pod.namespace, gs)
    if access is None:
        logger.warning(
            f"pod {pod.name} is gone but the broker secrets are missing: the sweep will retry"
        )
        return
    url, vhost = access
    queue = cleanup.queue_of_deleted_pod(pod.name, gs.broker.queue_prefix)
    async with Management(url) as mgmt:
        if not await mgmt.delete_queue(vhost, queue):
            return
    logger.info(f"pod {pod.name} is gone: deleted its queue {queue}")
    gateway = await kube.get_gateway(pod.namespace, pod.gateway)
    if gateway is not None:
        kopf.info(
            kopf.Body(cast(Any, gateway)),
            reason="QueueDeleted",
            message=f"pod {pod.name} gone: deleted {queue}",
        )
    await count_orphans(kube, metrics, pod.namespace, pod.gateway, 1)
