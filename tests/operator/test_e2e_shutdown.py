"""End to end: the operator stops promptly and cleanly while its gateways keep changing.

kopf stops an object's daemons first and drains its watch queues afterwards (for up to
``settings.queueing.exit_timeout``); an event drained then spawns the daemons again, with
a stop flag nobody will set. A daemon that slept on that flag alone (the queue sweep
sleeps 60 s) held the operator's exit until kopf cancelled it as a hung task, and the
cancellation came back out of ``kopf run`` as an error (the flaky teardowns of
test_e2e_scaling and test_e2e_apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tests.support import Vhost, wait_for

from .conftest import GATEWAY_RESOURCE, Cluster, running_operator

pytestmark = pytest.mark.timeout(90)

#: A stop that takes longer than this is the hang (kopf gives hung tasks 5 s, then cancels).
PROMPT = 4.0


async def churn(cluster: Cluster, name: str, done: asyncio.Event) -> None:
    """Watch events for the gateway all through a stop, as status writes and edits make them."""
    n = 0
    while not done.is_set():
        n += 1
        with contextlib.suppress(AssertionError):
            await cluster.patch(
                GATEWAY_RESOURCE, name, {"metadata": {"annotations": {"n": str(n)}}}
            )
        await asyncio.sleep(0.02)


async def test_operator_stops_promptly_while_its_gateway_keeps_changing(
    cluster: Cluster, vhost: Vhost, metrics_port: int
) -> None:
    await cluster.secrets(vhost)
    for attempt in range(3):  # the race is likely, not certain, in one stop
        name = f"gw{attempt}"
        done = asyncio.Event()
        task = None
        try:
            async with running_operator(cluster):
                await cluster.gateway(name, scaling={"intervalSeconds": 0.5})
                await wait_for(
                    lambda n=name: cluster.get("apps/v1/deployments", n),  # type: ignore[misc]
                    20,
                    message="the daemons' first tick (Deployment applied)",
                )
                task = asyncio.create_task(churn(cluster, name, done))
                await asyncio.sleep(0.3)
                stopping = time.monotonic()
            took = time.monotonic() - stopping
        finally:
            done.set()
            if task is not None:
                await task
        assert took < PROMPT, f"the operator took {took:.1f} s to stop (attempt {attempt + 1})"
