"""End to end: HTTP streams count as connections for the operator, as WebSockets do.

Clients on ``GET /sse`` and ``GET /stream`` (where WebSocket is blocked) load a pod
as sockets do: the operator reads ``clarion_connections`` (every transport), so
they scale the Deployment, and a rebalance sheds them (their last ``close``
frame, 1012).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.sseclient import Stream
from tests.support import GatewayProcess, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, Operate, replicas
from .test_e2e_scaling import open_sockets

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def streams(proc: GatewayProcess, paths: list[str]) -> AsyncIterator[list[Stream]]:
    """One stream per path on ``proc``, each past its welcome."""
    opened: list[Stream] = []
    try:
        for i, path in enumerate(paths):
            s = await Stream.open(f"{proc.http_url}{path}?user={proc.pod_name}-s{i}")
            opened.append(s)
            await s.wait_welcome()
        yield opened
    finally:
        for s in opened:
            await s.close()


async def test_streams_scale_the_deployment_as_sockets_do(
    cluster: Cluster, operate: Operate
) -> None:
    async with operate(
        {"min": 1, "max": 4},
        {"targetConnectionsPerPod": 2, "intervalSeconds": 0.5, "rebalance": False},
    ) as (a, b):
        await cluster.pod("gw", a)
        await cluster.pod("gw", b)

        def status() -> dict[str, Any]:
            return dict((cluster.get(GATEWAY_RESOURCE, "gw") or {}).get("status") or {})

        async with (
            contextlib.AsyncExitStack() as stack,
            streams(a, ["/sse", "/stream"]),
            streams(b, ["/sse"]),
        ):
            # 3 streams and 2 sockets at 2 per pod: ceil(5 / 2) = 3.
            await open_sockets(b, 2, stack)
            await wait_for(lambda: status().get("connections") == 5, 15, message="5 counted")
            await wait_for(lambda: replicas(cluster) == 3, 15, message="scale up to 3")


async def test_a_rebalance_sheds_streams(cluster: Cluster, operate: Operate) -> None:
    async with operate(
        {"min": 2, "max": 2},
        {"targetConnectionsPerPod": 100, "intervalSeconds": 0.5, "rebalance": True},
    ) as (a, b):
        # Everyone on one pod, as after a scale-out: mean 3, so 3 must go.
        async with streams(a, ["/sse", "/stream"] * 3) as opened:
            await cluster.pod("gw", a)
            await cluster.pod("gw", b)

            def shed() -> int:
                return sum(any(f.get("code") == 1012 for f in s.of_type("close")) for s in opened)

            await wait_for(lambda: shed() >= 3, 15, message="3 streams closed with 1012")
            await wait_for(lambda: cluster.events("Rebalanced"), 10, message="a Rebalanced event")
            assert shed() == 3
