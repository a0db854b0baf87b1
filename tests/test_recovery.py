"""Missed-message recovery: a pod is SIGKILLed while messages flow to its users;
they reconnect to the other pods with `since=<last id>` and lose nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import httpx
import pytest

from .support import GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client, User

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pods(vhost: Vhost, pod_factory: PodFactory, routing: str) -> list[GatewayProcess]:
    hosts = [f"127.0.0.{10 + i}" for i in range(3)]
    return pod_factory(3, "rec", amqp_url=vhost.amqp_url, hosts=hosts, routing=routing)


@pytest.mark.both_routings
async def test_sigkilled_pod_users_recover_everything_on_other_pods(
    pods: list[GatewayProcess],
) -> None:
    victim, survivor_b, survivor_c = pods
    users = [User(f"user{i}") for i in range(30)]
    for u in users:
        await u.connect(victim.ws_url)
    published: dict[str, list[str]] = {u.name: [] for u in users}
    async with httpx.AsyncClient(base_url=survivor_b.http_url, timeout=10) as api:

        async def publish(user: str, n: int) -> None:
            r = await api.post("/api/publish", json={"user": user, "data": n})
            assert r.status_code == 202, r.text
            published[user].append(r.json()["id"])

        # Everyone gets a first message, so everyone has a `since` to come back with.
        for i, u in enumerate(users):
            await publish(u.name, i)
        for u in users:
            assert u.client is not None
            await wait_for(lambda u=u: len(u.client.messages) >= 1, 10, message="first message")
            u.drain()

        stop = asyncio.Event()
        counter = 1000

        async def publisher() -> None:
            nonlocal counter
            rng = random.Random(7)
            while not stop.is_set():
                counter += 1
                await publish(rng.choice(users).name, counter)
                await asyncio.sleep(0.002)

        task = asyncio.create_task(publisher())
        await wait_for(lambda: counter > 1200, 20, message="200 messages in flight")
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for u in users:
            assert u.client is not None
            await u.client.wait_closed(10)
            u.drain()
        # Everyone comes back, on one of the two surviving pods, while publishing goes on.
        for i, u in enumerate(users):
            await u.connect((survivor_b if i % 2 else survivor_c).ws_url)
        reconnected_in = time.monotonic() - killed_at
        await wait_for(lambda: counter > 1600, 30, message="more messages after the reconnect")
        stop.set()
        await task

    total = sum(len(v) for v in published.values())

    def all_arrived() -> bool:
        for u in users:
            u.drain()
        return all(len(u.ids) >= len(published[u.name]) for u in users)

    await wait_for(all_arrived, 20, message="every published message delivered")
    for u in users:
        assert u.ids == published[u.name], f"{u.name}: lost or reordered"
        assert len(set(u.ids)) == len(u.ids), f"{u.name}: duplicates"
        assert u.welcomes[-1]["recovered"] is True
    print(
        f"\nrecovery: {total} messages to {len(users)} users, pod killed mid-stream, "
        f"all reconnected in {reconnected_in:.2f}s, lost 0, duplicates 0"
    )
    for u in users:
        await u.close()


async def test_since_older_than_history_says_not_recovered(pods: list[GatewayProcess]) -> None:
    pod = pods[0]
    ancient = "01000000-0000-7000-8000-000000000001"  # 2005: before any message
    client = await Client.connect(f"{pod.ws_url}?user=old&since={ancient}", "old")
    assert (await client.wait_welcome())["recovered"] is False
    assert client.frames[0]["type"] == "welcome"
    await client.close()


@pytest.mark.both_routings
async def test_channel_recovery_via_subscribe_since(pods: list[GatewayProcess]) -> None:
    a, b, _ = pods
    async with httpx.AsyncClient(timeout=10) as api:
        c1 = await Client.connect(f"{a.ws_url}?user=ch", "c1")
        await c1.wait_welcome()
        await c1.send({"type": "subscribe", "channel": "prices"})
        await c1.wait_frame(lambda f: isinstance(f, dict) and f.get("type") == "subscribed")
        r = await api.post(f"{b.http_url}/api/publish", json={"channel": "prices", "data": 1})
        first = r.json()["id"]
        await c1.wait_data(1)
        await c1.close()
        for n in (2, 3, 4):
            await api.post(f"{b.http_url}/api/publish", json={"channel": "prices", "data": n})
            await api.post(f"{b.http_url}/api/publish", json={"channel": "other", "data": n})
        c2 = await Client.connect(f"{b.ws_url}?user=ch", "c2")
        await c2.wait_welcome()
        await c2.send({"type": "subscribe", "channel": "prices", "since": first})
        sub = await c2.wait_frame(lambda f: isinstance(f, dict) and f.get("type") == "subscribed")
        assert sub["recovered"] is True and sub["missed"] == 3
        await api.post(f"{b.http_url}/api/publish", json={"channel": "prices", "data": 5})
        await c2.wait_data(5)
        assert c2.data() == [2, 3, 4, 5]
        await c2.close()


async def test_clarion_listen_reconnects_with_since(
    pods: list[GatewayProcess], vhost: Vhost, pod_factory: PodFactory, routing: str
) -> None:
    import json
    import sys

    victim, other, _ = pods
    listen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clarion",
        "listen",
        victim.ws_url,
        "--user",
        "cli-rec",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert listen.stdout is not None
    try:
        await wait_for(
            lambda: victim.metric("clarion_connections") >= 1, 15, message="listener connected"
        )
        async with httpx.AsyncClient(timeout=10) as api:

            async def publish(data: str) -> str:
                r = await api.post(
                    f"{other.http_url}/api/publish", json={"user": "cli-rec", "data": data}
                )
                assert r.status_code == 202
                return str(r.json()["id"])

            ids = [await publish("one")]
            first = json.loads(await asyncio.wait_for(listen.stdout.readline(), 15))
            assert first["data"] == "one"
            victim.kill()
            ids.append(await publish("two (while its pod is gone)"))
            pod_factory(
                1,
                "rec-reborn",
                hosts=[victim.host],
                port=victim.port,
                amqp_url=vhost.amqp_url,
                routing=routing,
            )
            second = json.loads(await asyncio.wait_for(listen.stdout.readline(), 30))
            ids.append(await publish("three"))
            third = json.loads(await asyncio.wait_for(listen.stdout.readline(), 15))
        assert [first["id"], second["id"], third["id"]] == ids
    finally:
        listen.kill()
        await listen.wait()
