"""The publishers coalesce concurrent publishes into batch requests; the pods publish a
batch as one confirmed publish of its messages. Real ``clarion serve`` pods on a vhost of
their own, real HTTP; each caller must still get its own id, key and error."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from clarion_client import AsyncPublisher, Backoff, Publisher, PublishError

from .support import GatewayProcess, PodFactory, Vhost
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

FAST = Backoff(base=0.01, max=0.05)


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> list[GatewayProcess]:
    return module_pod_factory(2, "batching", amqp_url=module_vhost.amqp_url)


def requests(pod: GatewayProcess) -> float:
    return pod.metric("clarion_publish_requests_total", {"status": "202"})


async def listener(pod: GatewayProcess, user: str) -> Client:
    c = await Client.connect(f"{pod.ws_url}?user={user}", user)
    await c.wait_welcome()
    return c


async def delivered(clients: list[Client], count: int) -> None:
    for c in clients:
        got = c.messages
        await c.until(lambda got=got: len(got) >= count, 15, f"{count} messages")


class Recording(httpx.AsyncBaseTransport):
    """Real HTTP to the pod; remembers every request body and can answer the first batch
    request 503 without sending it (a broker that did not confirm: nothing accepted)."""

    def __init__(self, fail_first_batch: bool = False) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.bodies: list[Any] = []
        self.fail_first_batch = fail_first_batch

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(await request.aread())
        self.bodies.append(body)
        if self.fail_first_batch and "messages" in body:
            self.fail_first_batch = False
            return httpx.Response(503, json={"error": "unavailable", "message": "test"})
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_concurrent_publishes_share_requests_and_each_gets_its_own_id(
    pods: list[GatewayProcess],
) -> None:
    a, b = pods
    user = f"u-{uuid.uuid4().hex[:6]}"
    clients = [await listener(a, user), await listener(b, user)]
    before = requests(a)
    async with AsyncPublisher(a.http_url) as pub:
        ids = await asyncio.gather(*(pub.publish(i, user=user) for i in range(40)))
    assert len(set(ids)) == 40 and all(len(i) == 36 for i in ids)
    await delivered(clients, 40)
    for c in clients:
        # Every message once, with the id its caller was given, in the callers' order.
        assert [(m["id"], m["data"]) for m in c.messages] == list(zip(ids, range(40), strict=True))
        await c.close()
    # Callers of one event-loop iteration share the first request: one, or two if the
    # scrape raced it.
    assert requests(a) - before <= 2


async def test_keys_are_kept_a_503_retries_the_batch_and_a_refusal_is_one_callers(
    pods: list[GatewayProcess],
) -> None:
    a, _ = pods
    user = f"u-{uuid.uuid4().hex[:6]}"
    client = await listener(a, user)
    transport = Recording(fail_first_batch=True)
    async with AsyncPublisher(
        a.http_url, backoff=FAST, client=httpx.AsyncClient(transport=transport)
    ) as pub:
        calls = [pub.publish("first", user=user)]
        calls += [pub.publish(i, user=user, idempotency_key=f"key-{user}-{i}") for i in range(5)]
        calls.append(pub.publish("bad", user="x" * 300))  # over 256 characters: 400
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The same keys again, alone: answered with the ids of the batch, not sent twice.
        again = [await pub.publish(i, user=user, idempotency_key=f"key-{user}-{i}") for i in (0, 4)]
    first, *keyed, bad = results
    assert isinstance(bad, PublishError) and bad.status == 400
    assert all(isinstance(r, str) for r in [first, *keyed])
    assert again == [keyed[0], keyed[4]]
    batches = [b["messages"] for b in transport.bodies if "messages" in b]
    # One batch of the seven; its 503 retried with the same body (the same keys); the 400
    # of the retry (the whole batch refused for one message) sent them one by one.
    assert len(batches) == 2 and batches[0] == batches[1] and len(batches[0]) == 7
    assert [m["idempotency_key"] for m in batches[0][1:6]] == [f"key-{user}-{i}" for i in range(5)]
    singles = [b for b in transport.bodies if "messages" not in b]
    assert [b["data"] for b in singles] == ["first", 0, 1, 2, 3, 4, "bad", 0, 4]
    async with AsyncPublisher(a.http_url) as pub:
        await pub.publish("end", user=user)
    await client.wait_data("end")
    assert client.data() == ["first", 0, 1, 2, 3, 4, "end"]
    assert [m["id"] for m in client.messages[1:6]] == keyed
    await client.close()


async def test_threads_publishing_at_once_share_requests(pods: list[GatewayProcess]) -> None:
    _, b = pods
    user = f"u-{uuid.uuid4().hex[:6]}"
    client = await listener(b, user)
    before = requests(b)

    def publish_all() -> list[str]:
        with Publisher(b.http_url) as pub, ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: pub.publish(i, user=user), range(64)))

    ids = await asyncio.to_thread(publish_all)
    assert len(set(ids)) == 64
    await delivered([client], 64)
    assert sorted(m["data"] for m in client.messages) == list(range(64))
    assert {m["data"]: m["id"] for m in client.messages} == dict(zip(range(64), ids, strict=True))
    assert requests(b) - before < 64
    await client.close()


async def test_one_caller_at_a_time_is_sent_alone_as_before(pods: list[GatewayProcess]) -> None:
    a, _ = pods
    transport = Recording()
    async with AsyncPublisher(a.http_url, client=httpx.AsyncClient(transport=transport)) as pub:
        for i in range(3):
            await pub.publish(i, broadcast=True)
    assert transport.bodies == [{"broadcast": True, "data": i} for i in range(3)]


async def test_a_pod_publishes_a_batch_with_per_message_ids_and_keys(
    pods: list[GatewayProcess],
) -> None:
    """The pod side: one request of 50 messages to users held by both pods, some keyed."""
    a, b = pods
    users = [f"u-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    clients = [await listener(a, users[0]), await listener(b, users[1])]
    batch = [
        {
            "user": users[i % 2],
            "data": i,
            **({"idempotency_key": f"k{i}-{users[0]}"} if i % 5 == 0 else {}),
        }
        for i in range(50)
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{a.http_url}/api/publish", json={"messages": batch})
        assert r.status_code == 202
        ids = r.json()["ids"]
        assert len(set(ids)) == 50
        # The keyed ones again, in one batch: the same ids, nothing sent again.
        keyed = [m for m in batch if "idempotency_key" in m]
        r2 = await http.post(f"{a.http_url}/api/publish", json={"messages": keyed})
        assert r2.json()["ids"] == [ids[i] for i in range(0, 50, 5)]
    await delivered(clients, 25)
    async with httpx.AsyncClient(timeout=10) as http:
        for user in users:
            await http.post(f"{a.http_url}/api/publish", json={"user": user, "data": "end"})
    for c in clients:
        await c.wait_data("end")
    for k, c in enumerate(clients):
        assert [(m["id"], m["data"]) for m in c.messages] == [
            (ids[i], i) for i in range(k, 50, 2)
        ] + [(c.messages[-1]["id"], "end")]
        await c.close()
