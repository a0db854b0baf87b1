"""End to end: a deleted pod's queue goes at once; an orphan queue is swept after the grace."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
import pytest

from clarion import names
from tests.support import MGMT_AUTH, MGMT_URL, PodFactory, Vhost, wait_for

from .conftest import (
    GATEWAY_RESOURCE,
    Cluster,
    queue_names,
    record,
    running_operator,
    start_gateways,
)

pytestmark = pytest.mark.timeout(60)

SLOW_SWEEP = {"intervalSeconds": 30, "graceSeconds": 60}


def declare(vhost: Vhost, queue: str) -> None:
    """A queue made directly on the broker, as a crashed pod would leave behind."""
    httpx.put(
        f"{MGMT_URL}/api/queues/{vhost.quoted}/{quote(queue, safe='')}",
        json={"durable": True, "auto_delete": False},
        auth=MGMT_AUTH,
        timeout=10,
    ).raise_for_status()


async def test_deleting_a_pod_deletes_its_queue_and_no_other(
    cluster: Cluster,
    vhost: Vhost,
    pod_factory: PodFactory,
    metrics_port: int,
) -> None:
    a, b = await start_gateways(pod_factory, vhost, "gw-a", "gw-b")
    qa, qb = names.queue_name(a.pod_name), names.queue_name(b.pod_name)
    await wait_for(lambda: queue_names(vhost), 10, message="pod queues")
    assert {qa, qb} <= await queue_names(vhost)
    await cluster.secrets(vhost)
    async with running_operator(cluster):
        await cluster.gateway("gw", queueCleanup=SLOW_SWEEP, scaling={"intervalSeconds": 1})
        await cluster.pod("gw", a)
        await cluster.pod("gw", b)
        await wait_for(lambda: cluster.get("apps/v1/deployments", "gw"), 20, message="Deployment")

        # The kubelet stops the process, then the pod object goes.
        await asyncio.to_thread(b.stop)
        deleted = time.monotonic()
        await cluster.delete("v1/pods", b.pod_name)

        async def gone() -> bool:
            return qb not in await queue_names(vhost)

        await wait_for(gone, 15, 0.05, message=f"{qb} deleted")
        record("pod deleted -> its queue deleted", time.monotonic() - deleted)
        assert qa in await queue_names(vhost)

        def counted() -> bool:
            gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
            return (gw.get("status") or {}).get("orphanQueuesDeleted") == 1

        await wait_for(counted, 10, message="status.orphanQueuesDeleted")
        await wait_for(lambda: cluster.events("QueueDeleted"), 10, message="a QueueDeleted event")
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert f'{names.M_OP_ORPHANS_DELETED}_total{{gateway="clarion-test/gw"}} 1.0' in metrics
    assert qa in await queue_names(vhost)


async def test_orphan_queue_is_swept_after_the_grace(
    cluster: Cluster,
    vhost: Vhost,
    pod_factory: PodFactory,
    metrics_port: int,
) -> None:
    (a,) = await start_gateways(pod_factory, vhost, "gw-a")
    ghost = names.queue_name("gw-ghost-0")
    await asyncio.to_thread(declare, vhost, ghost)
    await asyncio.to_thread(declare, vhost, "other-app.jobs")
    live = names.queue_name(a.pod_name)
    await cluster.secrets(vhost)
    async with running_operator(cluster):
        created = time.monotonic()
        await cluster.gateway(
            "gw",
            queueCleanup={"intervalSeconds": 0.5, "graceSeconds": 1},
            scaling={"intervalSeconds": 1},
        )
        await cluster.pod("gw", a)

        async def swept() -> bool:
            return ghost not in await queue_names(vhost)

        await wait_for(swept, 15, 0.05, message=f"{ghost} swept")
        record("orphan queue swept (grace 1 s, interval 0.5 s)", time.monotonic() - created)
        await wait_for(lambda: cluster.events("QueuesSwept"), 10, message="a QueuesSwept event")
        # Two more sweeps: still only the orphan went.
        seen = len(cluster.requests())

        def swept_twice_more() -> bool:
            reqs = cluster.requests()[seen:]
            return sum(r.resource is not None and r.resource.plural == "secrets" for r in reqs) >= 4

        await wait_for(swept_twice_more, 10, message="two more sweeps")
        remaining = await queue_names(vhost)
        assert live in remaining and "other-app.jobs" in remaining
