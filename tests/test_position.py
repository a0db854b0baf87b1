"""A client that has received nothing yet still recovers what it missed across a reconnect.

The recovery recipe reconnects with ``since`` = the greatest message id
received; a client that had received nothing had no ``since``, so whatever
was published to it while it reconnected (a rolling deploy drains every
socket) was lost. The welcome and every ``subscribed`` now carry a
``position``: a point in time written as a message id, which a client uses as
its ``since`` until a message arrives.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from clarion.message import id_timestamp_ms, is_position

from .support import InProcessPod
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.broker)])
async def pod(request: pytest.FixtureRequest) -> AsyncIterator[InProcessPod]:
    settings = (
        {} if request.param == "memory" else {"amqp_url": request.getfixturevalue("vhost").amqp_url}
    )
    async with InProcessPod(auth="none", api_keys=["k"], **settings) as p:
        yield p


async def publish(pod: InProcessPod, **body: object) -> str:
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}) as http:
        r = await http.post(f"{pod.http_url}/api/publish", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


async def test_the_welcome_position_recovers_a_gap_with_nothing_received(
    pod: InProcessPod,
) -> None:
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"c-{uuid.uuid4().hex[:6]}"
    first = await Client.connect(f"{pod.ws_url}?user={user}")
    welcome = await first.wait_welcome()
    position = welcome["position"]
    assert is_position(position)
    await first.send({"type": "subscribe", "channel": channel})
    subscribed = await first.wait_reply("subscribed")
    assert is_position(subscribed["position"])
    assert id_timestamp_ms(subscribed["position"]) >= id_timestamp_ms(position)
    await first.close()
    # Published while the client was away: it had received nothing before.
    missed = [await publish(pod, user=user, data=i) for i in range(3)]
    on_channel = await publish(pod, channel=channel, data="c")
    again = await Client.connect(f"{pod.ws_url}?user={user}&since={position}")
    w = await again.wait_welcome()
    assert (w["recovered"], w["missed"]) == (True, 3)
    await again.send({"type": "subscribe", "channel": channel, "since": subscribed["position"]})
    s = await again.wait_reply("subscribed")
    assert (s["recovered"], s["missed"]) == (True, 1)
    await again.until(lambda: len(again.of_type("message")) == 4 or None, 10, "4 messages")
    assert [m["id"] for m in again.of_type("message")] == [*missed, on_channel]
    await again.close()


async def test_an_old_position_recovers_while_the_history_has_dropped_nothing(
    pod: InProcessPod,
) -> None:
    """Older than every message, but nothing was ever dropped: everything is there.

    (When retention has dropped messages after a position, the answer is
    ``expired``: tests/test_replays.py.)"""
    user = f"u-{uuid.uuid4().hex[:6]}"
    sent = await publish(pod, user=user, data="x")
    ancient = "00000000-0000-7000-8000-000000000000"
    client = await Client.connect(f"{pod.ws_url}?user={user}&since={ancient}")
    w = await client.wait_welcome()
    assert (w["recovered"], w["missed"]) == (True, 1)
    await client.until(lambda: client.of_type("message") or None, 10, "the message")
    assert client.of_type("message")[0]["id"] == sent
    await client.close()
