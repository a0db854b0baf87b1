"""Status writes against the emulated API server: counts from concurrent handlers add up."""

from __future__ import annotations

import asyncio

import pytest

from clarion_operator.kube import Kube
from clarion_operator.metrics import OperatorMetrics
from clarion_operator.queues import count_orphans

from .conftest import GATEWAY_RESOURCE, NS, Cluster

pytestmark = pytest.mark.timeout(30)


def orphans(cluster: Cluster) -> int | None:
    gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
    return (gw.get("status") or {}).get("orphanQueuesDeleted")


async def test_concurrent_orphan_counts_are_all_kept(cluster: Cluster) -> None:
    """The pod-deletion handler and the sweep may count at the same moment: none is lost."""
    await cluster.gateway("gw")
    kube = await Kube.connect()
    metrics = OperatorMetrics()
    try:
        await asyncio.gather(*(count_orphans(kube, metrics, NS, "gw", n) for n in (1, 2, 3)))
        assert orphans(cluster) == 6
        await count_orphans(kube, metrics, NS, "gw", 0)  # nothing deleted: nothing written
        await count_orphans(kube, metrics, NS, "gone", 1)  # no such gateway: no error
        assert orphans(cluster) == 6
    finally:
        await kube.close()
