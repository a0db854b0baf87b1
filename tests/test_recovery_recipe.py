"""The documented recovery recipe delivers every message exactly once, reconnect after reconnect.

A client keeps the greatest message id it has seen (ids are UUIDv7 and sort by
publish time), reconnects with ``?since=`` and re-subscribes its channel with
the same ``since``. A replay sends user and broadcast messages (welcome) and
channel messages (subscribed) separately, so the last id *received* can be
older than one received before it: keeping that one replays messages again
at the next reconnect. Here user, channel and broadcast messages are
interleaved while the client hops between two pods on RabbitMQ.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client, User

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_routings]  # hops between pods

ROUNDS = 6
PER_ROUND = 9  # three of each target kind, interleaved


@pytest.fixture
def pods(vhost: Vhost, pod_factory: PodFactory, routing: str) -> list[GatewayProcess]:
    return pod_factory(
        2,
        "recipe",
        amqp_url=vhost.amqp_url,
        args=["--auth", "none", "--api-key", "k"],
        hosts=["127.0.0.60", "127.0.0.61"],
        routing=routing,
    )


async def test_reconnect_after_reconnect_no_gap_no_duplicate(pods: list[GatewayProcess]) -> None:
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    client = User(user, channels=[channel])
    other = await Client.connect(f"{pods[0].ws_url}?user=bystander", "bystander")
    await other.wait_welcome()
    published: list[str] = []
    targets = [{"user": user}, {"channel": channel}, {"broadcast": True}]
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}, timeout=10) as http:

        async def publish(n: int) -> None:
            for i in range(n):
                body = {**targets[i % 3], "data": len(published)}
                r = await http.post(f"{pods[len(published) % 2].http_url}/api/publish", json=body)
                assert r.status_code == 202, r.text
                published.append(r.json()["id"])

        def caught_up() -> bool:
            client.drain()
            return len(client.ids) >= len(published)

        async def connect(pod: GatewayProcess) -> None:  # docs/failure-modes.md's recipe
            await client.connect(pod.ws_url)
            assert client.welcomes[-1].get("recovered", True), client.welcomes[-1]
            assert client.subscribed[-1].get("recovered", True), client.subscribed[-1]

        for rnd in range(ROUNDS):
            await connect(pods[rnd % 2])
            if rnd % 2 == 0:
                # Live messages right behind the replay; in the other rounds the client
                # leaves again right after the replay, as a flaky mobile link does.
                await publish(PER_ROUND)
            await wait_for(caught_up, 10, message=f"round {rnd}: {len(published)} messages")
            await client.close()
            await publish(PER_ROUND)  # missed while away
        await connect(pods[ROUNDS % 2])
        await wait_for(caught_up, 10, message="the last round's messages")
    await client.close()
    assert sorted(client.ids) == sorted(published)  # no gap, no duplicate
    await other.close()
