"""A publish retried with the same idempotency key is delivered once, cluster-wide."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import httpx
import pytest

from clarion.message import new_message_id

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def env(module_vhost: Vhost, module_pod_factory: PodFactory, routing: str) -> Iterator[Any]:
    args = ["--auth", "none", "--api-key", "k", "--idempotency-window", "3"]
    with module_pod_factory(
        2, "idem", amqp_url=module_vhost.amqp_url, args=args, routing=routing
    ) as pods:
        yield pods, module_vhost


def publish(pod: GatewayProcess, body: Any, key: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{pod.http_url}/api/publish", json=body, headers=headers, timeout=10)


async def listeners(pods: list[GatewayProcess], user: str) -> list[Client]:
    out = []
    for pod in pods:
        c = await Client.connect(f"{pod.ws_url}?user={user}", user)
        await c.wait_welcome()
        out.append(c)
    return out


async def settle(clients: list[Client], marker: Any, pod: GatewayProcess, user: str) -> None:
    """Publish a marker after the messages under test and wait for it: then all have arrived."""
    assert publish(pod, {"user": user, "data": marker}).status_code == 202
    for c in clients:
        await c.wait_data(marker)


@pytest.mark.both_routings
async def test_a_retry_on_another_pod_is_answered_with_the_first_id_and_delivered_once(
    env: Any,
) -> None:
    (a, b), _ = env
    user, key = f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    clients = await listeners([a, b], user)
    first = publish(a, {"user": user, "data": "order paid"}, key)  # its answer "lost"
    assert first.status_code == 202
    await clients[1].wait_data("order paid")  # it reached pod b
    retry = publish(b, {"user": user, "data": "order paid"}, key)
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    await settle(clients, "end", a, user)
    for c in clients:
        assert c.data() == ["order paid", "end"]
    h = httpx.get(f"{b.http_url}/api/history", params={"user": user}, headers=AUTH, timeout=10)
    assert [m["data"] for m in h.json()["messages"]] == ["order paid", "end"]
    for c in clients:
        await c.close()


@pytest.mark.both_routings
async def test_a_first_attempt_whose_confirm_was_lost_is_not_delivered_twice(env: Any) -> None:
    (a, b), vhost = env
    user, key = f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    clients = await listeners([a, b], user)
    # What a pod that died between the broker's routing and its answer left behind.
    mid = new_message_id()
    frame = (
        f'{{"type":"message","id":"{mid}","target":{{"user":"{user}"}},'
        f'"data":"lost confirm","ts":{int(time.time() * 1000)}}}'
    )
    conn = await aio_pika.connect(vhost.amqp_url)
    async with conn:
        ch = await conn.channel()
        exchange = await ch.get_exchange("clarion.fanout")
        headers = {"clarion-target": "user", "clarion-name": user, "clarion-key": key}
        await exchange.publish(
            aio_pika.Message(frame.encode(), message_id=mid, headers=headers), routing_key=""
        )
    await clients[1].wait_data("lost confirm")
    retry = publish(b, {"user": user, "data": "lost confirm"}, key)
    assert retry.json()["id"] == mid
    await settle(clients, "end", a, user)
    for c in clients:
        assert c.data() == ["lost confirm", "end"]
        await c.close()


@pytest.mark.both_routings
async def test_racing_retries_on_two_pods_deliver_once(env: Any) -> None:
    (a, b), _ = env
    user, key = f"u-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    clients = await listeners([a, b], user)
    body = {"user": user, "data": "once"}
    answers = await asyncio.gather(
        asyncio.to_thread(publish, a, body, key), asyncio.to_thread(publish, b, body, key)
    )
    assert all(r.status_code == 202 for r in answers)
    await settle(clients, "end", a, user)
    for c in clients:
        assert c.data() == ["once", "end"], c.data()
        assert c.messages[0]["id"] in {r.json()["id"] for r in answers}
    late = await Client.connect(f"{a.ws_url}?user={user}&since={new_message_id(0)}")
    await late.wait_welcome()
    await late.wait_data("end")
    assert late.data().count("once") == 1  # the replay skips the second copy
    for c in [*clients, late]:
        await c.close()


@pytest.mark.both_routings
async def test_batch_keys_and_the_window(env: Any, routing: str) -> None:
    (a, b), _ = env
    user = f"u-{uuid.uuid4().hex[:6]}"
    k1, k2 = uuid.uuid4().hex, uuid.uuid4().hex
    clients = await listeners([a], user)
    batch = {
        "messages": [
            {"user": user, "data": 1, "idempotency_key": k1},
            {"user": user, "data": 2, "idempotency_key": k2},
            {"user": user, "data": 3},
        ]
    }
    ids = publish(a, batch).json()["ids"]
    await clients[0].wait_data(3)
    again = publish(b, batch).json()["ids"]
    assert again[2] != ids[2]  # the unkeyed one is new
    if routing == "fanout":
        assert again[:2] == ids[:2]
    else:
        # Pod b holds no socket of the user: the messages were routed past it, so it
        # did not learn their keys and publishes them again; pod a drops the copies.
        assert again[:2] != ids[:2]
    await clients[0].wait_data(3)
    await wait_for(lambda: clients[0].data().count(3) == 2, 5, message="the unkeyed again")
    assert clients[0].data().count(1) == 1 and clients[0].data().count(2) == 1
    await asyncio.sleep(3.5)  # the window is 3 s here: then a key is new again
    late = publish(a, {"user": user, "data": 1, "idempotency_key": k1}).json()["id"]
    assert late != ids[0]
    await clients[0].wait_frame(lambda f: isinstance(f, dict) and f.get("id") == late, 5)
    assert clients[0].data().count(1) == 2
    await clients[0].close()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"user": "u", "data": 1, "idempotency_key": ""}, None),
        ({"user": "u", "data": 1, "idempotency_key": 7}, None),
        ({"user": "u", "data": 1, "idempotency_key": "k" * 257}, None),
        ({"user": "u", "data": 1}, "k" * 257),
        ({"user": "u", "data": 1, "idempotency_key": "a"}, "b"),
        ({"messages": [{"user": "u", "data": 1}]}, "k"),
        (
            {
                "messages": [
                    {"user": "u", "data": 1, "idempotency_key": "same"},
                    {"user": "v", "data": 2, "idempotency_key": "same"},
                ]
            },
            None,
        ),
    ],
)
def test_bad_keys_are_400(env: Any, body: Any, key: str | None) -> None:
    (a, _), _ = env
    r = publish(a, body, key)
    assert r.status_code == 400, r.text
