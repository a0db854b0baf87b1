"""End to end: sockets on real gateway pods move the Deployment's replicas, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import websockets

from tests.support import GatewayProcess, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, Operate, record, replicas

pytestmark = pytest.mark.timeout(60)


async def open_sockets(
    proc: GatewayProcess, count: int, stack: contextlib.AsyncExitStack
) -> list[Any]:
    """``count`` WebSocket clients on one pod, each past its welcome frame."""
    socks = []
    for i in range(count):
        ws = await stack.enter_async_context(
            websockets.connect(f"{proc.ws_url}?user={proc.pod_name}-u{i}", open_timeout=10)
        )
        await asyncio.wait_for(ws.recv(), 10)  # welcome
        socks.append(ws)
    return socks


async def test_sockets_scale_the_deployment_up_and_back_down(
    cluster: Cluster, operate: Operate
) -> None:
    async with operate(
        {"min": 1, "max": 4},
        {
            "targetConnectionsPerPod": 2,
            "intervalSeconds": 0.5,
            "scaleDownStabilizationSeconds": 2,
            "maxScaleDownStep": 1,
            "rebalance": False,
        },
    ) as (a, b):
        await cluster.pod("gw", a)
        await cluster.pod("gw", b)

        async with contextlib.AsyncExitStack() as stack:
            # 4 sockets at 2 per pod: ceil(4 / 2) = 2.
            await open_sockets(a, 2, stack)
            await open_sockets(b, 2, stack)
            await wait_for(lambda: replicas(cluster) == 2, 20, message="scale up to 2")
            # 2 more (opened concurrently): 3.
            opened = time.monotonic()
            await asyncio.gather(open_sockets(a, 1, stack), open_sockets(b, 1, stack))
            await wait_for(lambda: replicas(cluster) == 3, 20, message="scale up to 3")
            record(
                "scale up (4 -> 6 sockets: 2 -> 3 replicas, interval 0.5 s)",
                time.monotonic() - opened,
            )

            def status() -> dict[str, Any]:
                return dict((cluster.get(GATEWAY_RESOURCE, "gw") or {}).get("status") or {})

            await wait_for(lambda: status().get("connections") == 6, 10, message="status")
            assert status()["desiredReplicas"] == 3 and status().get("lastScaleTime")
            await wait_for(lambda: cluster.events("Scaled"), 10, message="a Scaled event")
        closed = time.monotonic()

        # Back down after the 2 s window, one pod per step: 3 -> 2 -> 1.
        await wait_for(lambda: replicas(cluster) == 1, 20, message="scale down to 1")
        record("scale down (3 -> 1 replicas, window 2 s, step 1)", time.monotonic() - closed)
        trail = [v["spec"].get("replicas") for v in cluster.history("apps/v1/deployments", "gw")]
        trail = [r for i, r in enumerate(trail) if i == 0 or r != trail[i - 1]]
        assert trail == [1, 2, 3, 2, 1]


async def test_unbalanced_pods_are_asked_to_shed(cluster: Cluster, operate: Operate) -> None:
    async with operate(
        {"min": 2, "max": 2},
        {"targetConnectionsPerPod": 100, "intervalSeconds": 0.5, "rebalance": True},
    ) as (a, b):
        async with contextlib.AsyncExitStack() as stack:
            # Everyone on one pod, as after a scale-out: mean 3, so 3 must go.
            socks = await open_sockets(a, 6, stack)
            await cluster.pod("gw", a)
            await cluster.pod("gw", b)
            added = time.monotonic()

            def closed_1012() -> int:
                return sum(ws.close_code == 1012 for ws in socks)

            await wait_for(lambda: closed_1012() >= 3, 15, message="3 sockets closed with 1012")
            record("rebalance (6/0 sockets -> 3 shed)", time.monotonic() - added)
            await wait_for(lambda: cluster.events("Rebalanced"), 10, message="a Rebalanced event")
            # Rate-limited: nothing more is shed while the rest stays put.
            assert closed_1012() == 3


async def test_unreadable_metrics_never_scale_down(cluster: Cluster, operate: Operate) -> None:
    async with operate(
        {"min": 1, "max": 4},
        {
            "targetConnectionsPerPod": 2,
            "intervalSeconds": 0.3,
            "scaleDownStabilizationSeconds": 0,
            "maxScaleDownStep": 4,
            "rebalance": False,
        },
    ) as (a, b):
        # Both pods in the API and b unreadable before the replicas go up: a tick that saw
        # only pod a (0 connections, all known) would rightly scale 3 down to 1.
        await cluster.pod("gw", a)
        await cluster.pod("gw", b)
        b.kill()  # still Ready in the API, but its /metrics cannot be read

        def condition() -> dict[str, Any]:
            gw = cluster.get(GATEWAY_RESOURCE, "gw") or {}
            conds = (gw.get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "ScalingActive"), {})

        await wait_for(lambda: condition().get("reason") == "MetricsUnknown", 10, message="unknown")
        await cluster.patch("apps/v1/deployments", "gw", {"spec": {"replicas": 3}})
        ticks = len(cluster.requests())

        def ticked(n: int) -> bool:
            reqs = cluster.requests()[ticks:]
            return (
                sum(
                    r.method == "GET"
                    and r.name == "gw"
                    and r.resource is not None
                    and r.resource.plural == "deployments"
                    for r in reqs
                )
                >= n
            )

        await wait_for(lambda: ticked(5), 10, message="five unknown ticks")
        assert replicas(cluster) == 3  # 0 known connections, but one pod unread: hold

        # The pod is gone for good: the data is complete again, and it is 0 connections.
        await cluster.delete("v1/pods", b.pod_name)
        await wait_for(lambda: replicas(cluster) == 1, 10, message="scale down once known")
        await wait_for(lambda: condition().get("status") == "True", 10, message="known again")
