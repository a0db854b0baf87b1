"""``--max-connections-per-user``: one socket over the limit is closed 4504 and the clients stop.

Counted per pod (no pod asks another): two pods over one RabbitMQ each take the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from clarion_client import Closed, Subscriber

from .support import InProcessPod, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost) -> Iterator[tuple[InProcessPod, InProcessPod]]:
    settings = {"amqp_url": module_vhost.amqp_url, "auth": "none", "max_connections_per_user": 2}
    with InProcessPod(**settings) as a, InProcessPod(**settings) as b:
        yield a, b


async def welcomed(pod: InProcessPod, user: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?user={user}")
    await c.wait_welcome()
    return c


async def test_one_over_the_limit_is_closed_4504(pods: tuple[InProcessPod, InProcessPod]) -> None:
    pod = pods[0]
    first, second = await welcomed(pod, "ann"), await welcomed(pod, "ann")
    third = await Client.connect(f"{pod.ws_url}?user=ann")
    assert await third.wait_closed(5) == 4504
    assert third.close_reason == "too many connections for this user"
    assert not third.of_type("welcome")
    # Another user is not counted against ann.
    other = await welcomed(pod, "bob")
    # One of ann's leaves: she may connect again.
    await first.close()
    await wait_for(lambda: len(pod.gateway.hub.by_user.get("ann", ())) == 1, 5)
    again = await Client.connect(f"{pod.ws_url}?user=ann")
    await again.wait_welcome()
    assert pod.metric("clarion_limit_hits_total", {"limit": "user_connections"}) >= 1
    assert pod.metric("clarion_connections_closed_total", {"reason": "user_limit"}) >= 1
    for c in (second, other, again):
        await c.close()


async def test_the_limit_is_per_pod(pods: tuple[InProcessPod, InProcessPod]) -> None:
    a, b = pods
    held = [await welcomed(a, "cat"), await welcomed(a, "cat"), await welcomed(b, "cat")]
    held.append(await welcomed(b, "cat"))
    over = await Client.connect(f"{b.ws_url}?user=cat")
    assert await over.wait_closed(5) == 4504
    for c in held:
        await c.close()


async def test_an_http_stream_over_the_limit_is_refused_and_not_retried(
    pods: tuple[InProcessPod, InProcessPod],
) -> None:
    pod = pods[0]
    held = [await welcomed(pod, "dan"), await welcomed(pod, "dan")]
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{pod.http_url}/sse?user=dan")
    assert r.status_code == 401  # a status EventSource does not retry
    assert r.json()["code"] == 4504 and r.json()["reconnect"] is False
    for c in held:
        await c.close()


async def test_the_python_subscriber_stops_at_4504(
    pods: tuple[InProcessPod, InProcessPod],
) -> None:
    pod = pods[0]
    held = [await welcomed(pod, "eve"), await welcomed(pod, "eve")]
    sub = Subscriber(pod.ws_url, user="eve")
    with pytest.raises(Closed) as stopped:
        async with asyncio.timeout(10):
            async for _ in sub:
                pass
    assert stopped.value.code == 4504
    assert sub.stats.connections == 0
    await sub.close()
    for c in held:
        await c.close()


async def test_sockets_of_one_user_at_the_same_instant_keep_the_limit(
    pods: tuple[InProcessPod, InProcessPod],
) -> None:
    pod = pods[0]
    clients = await asyncio.gather(*(Client.connect(f"{pod.ws_url}?user=fay") for _ in range(6)))
    await wait_for(lambda: all(c.of_type("welcome") or c.closed for c in clients), 10)
    welcomed = [c for c in clients if c.of_type("welcome")]
    refused = [c for c in clients if c.closed]
    assert len(welcomed) == 2 and len(refused) == 4
    assert {c.close_code for c in refused} == {4504}
    await wait_for(lambda: len(pod.gateway.hub.by_user.get("fay", ())) == 2, 5)
    for c in welcomed:
        await c.close()
