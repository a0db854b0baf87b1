"""Cross-pod delivery: three real `clarion serve` pods on one real RabbitMQ.

The pods listen on 127.0.0.2, .3 and .4 on the same port, as pods with their
own IPs would. Each test checks what a user sees on real WebSocket sockets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from .support import (
    MGMT_AUTH,
    MGMT_URL,
    GatewayProcess,
    PodFactory,
    Vhost,
    free_port,
    wait_for,
    wait_for_sync,
)
from .wsclient import Client

#: Delivery across pods is what ``--routing`` changes: every test runs in both modes.
pytestmark = [pytest.mark.timeout(60), pytest.mark.both_routings]

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def _common_port() -> int:
    while True:
        port = free_port(HOSTS[0])
        if all(_port_free(h, port) for h in HOSTS[1:]):
            return port


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Cluster:
    def __init__(self, vhost: Vhost, pods: list[GatewayProcess], b_user: str) -> None:
        self.vhost = vhost
        self.pods = pods
        self.a, self.b, self.c = pods
        #: Pod b's RabbitMQ user: its own name, the broker being shared with other runs.
        self.b_user = b_user

    def publish(self, pod: GatewayProcess, body: dict[str, object]) -> str:
        r = httpx.post(f"{pod.http_url}/api/publish", json=body, timeout=10)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    async def connect(self, pod: GatewayProcess, user: str) -> Client:
        client = await Client.connect(f"{pod.ws_url}?user={quote(user)}", f"{user}@{pod.pod_name}")
        await client.wait_welcome()
        return client


@pytest.fixture(scope="module")
def cluster(module_vhost: Vhost, module_pod_factory: PodFactory, routing: str) -> Iterator[Cluster]:
    # Pod b connects as its own RabbitMQ user, so the blip test can keep it out. Users are
    # the broker's, not the vhost's: a name of this run's own (another run on the shared
    # broker deleting "its" user would cut this pod b off).
    b_user = f"clarion-test-podb-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10) as mgmt:
        mgmt.put(f"/api/users/{b_user}", json={"password": "podb", "tags": ""})
        mgmt.put(
            f"/api/permissions/{module_vhost.quoted}/{b_user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    args = ["--auth", "none", "--allow-client-publish"]
    pods = module_pod_factory(
        len(HOSTS),
        "pod",
        amqp_url=module_vhost.amqp_url,
        args=args,
        hosts=HOSTS,
        port=_common_port(),
        routing=routing,
        start=False,
    )
    pods[1].amqp_url = module_vhost.amqp_url.replace("guest:guest@", f"{b_user}:podb@")
    try:
        with module_pod_factory.start(pods):
            yield Cluster(module_vhost, pods, b_user)
    finally:
        httpx.delete(f"{MGMT_URL}/api/users/{b_user}", auth=MGMT_AUTH, timeout=10)


async def _sentinel(cluster: Cluster, clients: list[Client]) -> None:
    """Broadcast a marker and wait until every client has it: everything sent
    before it has arrived, so a missing message is really missing."""
    marker = f"sentinel-{uuid.uuid4().hex}"
    cluster.publish(cluster.a, {"broadcast": True, "data": marker})
    for client in clients:
        await client.wait_data(marker)


def _count(client: Client, value: object) -> int:
    return sum(1 for d in client.data() if d == value)


async def test_user_message_reaches_every_socket_of_that_user_on_every_pod(
    cluster: Cluster,
) -> None:
    user = f"u-{uuid.uuid4().hex[:6]}"
    u_a = await cluster.connect(cluster.a, user)
    u_c = await cluster.connect(cluster.c, user)
    other_a = await cluster.connect(cluster.a, "someone-else")
    other_b = await cluster.connect(cluster.b, "someone-else-2")
    everyone = [u_a, u_c, other_a, other_b]
    try:
        cluster.publish(cluster.a, {"user": user, "data": {"order": 42}})
        await _sentinel(cluster, everyone)
        assert _count(u_a, {"order": 42}) == 1
        assert _count(u_c, {"order": 42}) == 1
        assert _count(other_a, {"order": 42}) == 0
        assert _count(other_b, {"order": 42}) == 0
        msg = next(m for m in u_c.messages if m["data"] == {"order": 42})
        assert msg["target"] == {"user": user}
        assert isinstance(msg["ts"], int) and len(msg["id"]) == 36
    finally:
        for c in everyone:
            await c.close()


async def test_broadcast_reaches_every_socket_on_every_pod_exactly_once(cluster: Cluster) -> None:
    clients = [await cluster.connect(pod, f"b{i}") for i, pod in enumerate(cluster.pods * 2)]
    try:
        cluster.publish(cluster.b, {"broadcast": True, "data": "hello all"})
        await _sentinel(cluster, clients)
        assert [_count(c, "hello all") for c in clients] == [1] * len(clients)
    finally:
        for c in clients:
            await c.close()


async def test_channel_subscribe_and_unsubscribe_across_pods(cluster: Cluster) -> None:
    sub_a = await cluster.connect(cluster.a, "s1")
    sub_c = await cluster.connect(cluster.c, "s2")
    bystander = await cluster.connect(cluster.b, "s3")
    clients = [sub_a, sub_c, bystander]
    try:
        for c in (sub_a, sub_c):
            await c.send({"type": "subscribe", "channel": "news"})
            await c.wait_frame(
                lambda f: (
                    isinstance(f, dict)
                    and (f.get("type"), f.get("channel")) == ("subscribed", "news")
                    and "position" in f
                )
            )
        cluster.publish(cluster.b, {"channel": "news", "data": "n1"})
        await _sentinel(cluster, clients)
        assert (_count(sub_a, "n1"), _count(sub_c, "n1"), _count(bystander, "n1")) == (1, 1, 0)

        await sub_c.send({"type": "unsubscribe", "channel": "news"})
        await sub_c.wait_frame(lambda f: f == {"type": "unsubscribed", "channel": "news"})
        cluster.publish(cluster.c, {"channel": "news", "data": "n2"})
        await _sentinel(cluster, clients)
        assert (_count(sub_a, "n2"), _count(sub_c, "n2"), _count(bystander, "n2")) == (1, 0, 0)
    finally:
        for c in clients:
            await c.close()


async def test_bare_text_from_a_client_reaches_everyone(cluster: Cluster) -> None:
    typist = await cluster.connect(cluster.a, "typist")
    readers = [await cluster.connect(pod, f"reader{i}") for i, pod in enumerate(cluster.pods)]
    try:
        await typist.send("hi there")
        for c in [typist, *readers]:
            frame = await c.wait_data({"from": "typist", "text": "hi there"})
            assert frame["target"] == {"broadcast": True}
        published = await typist.wait_frame(
            lambda f: isinstance(f, dict) and f.get("type") == "published"
        )
        assert len(published["id"]) == 36
    finally:
        for c in [typist, *readers]:
            await c.close()


async def test_batch_publish_is_delivered_and_returns_ids(cluster: Cluster) -> None:
    c = await cluster.connect(cluster.b, "batchy")
    try:
        r = httpx.post(
            f"{cluster.a.http_url}/api/publish",
            json={"messages": [{"user": "batchy", "data": i} for i in range(5)]},
        )
        assert r.status_code == 202
        ids = r.json()["ids"]
        assert len(ids) == 5 and len(set(ids)) == 5
        await wait_for(lambda: len(c.messages) >= 5, 10, message="5 batch messages")
        assert sorted(m["data"] for m in c.messages) == [0, 1, 2, 3, 4]
        assert {m["id"] for m in c.messages} == set(ids)
    finally:
        await c.close()


def test_management_api_shows_one_queue_per_pod_bound_to_the_fanout(
    cluster: Cluster, routing: str
) -> None:
    v = cluster.vhost
    expected = {f"clarion.pod.{p.pod_name}" for p in cluster.pods}

    def queues_with_consumers() -> dict[str, dict[str, object]] | None:
        qs = {q["name"]: q for q in v.queues() if q["name"].startswith("clarion.pod.")}
        if set(qs) == expected and all(q.get("consumers") == 1 for q in qs.values()):
            return qs
        return None

    queues = wait_for_sync(queues_with_consumers, 20, 0.5, "one consumer on each pod queue")
    for q in queues.values():
        # Transient: a pod queue must not outlive its node (docs/failure-modes.md, broker HA).
        assert q["exclusive"] is True and q["durable"] is False  # dies with the connection
        args = q["arguments"]
        assert args["x-overflow"] == "drop-head"
        assert {"x-max-length", "x-message-ttl", "x-expires"} <= set(args)
    bindings = v.api("/api/exchanges/{vhost}/clarion.fanout/bindings/source")
    bound = {b["destination"] for b in bindings}
    assert "clarion.fanout.history" in bound
    exchange = v.api("/api/exchanges/{vhost}/clarion.fanout")
    assert exchange["type"] == "fanout" and exchange["durable"] is True
    if routing == "fanout":
        assert expected <= bound
        return
    # Routed: the pod queues hang off the direct exchange, bound to it by key.
    assert not expected & bound and "clarion.fanout.routed" in bound
    routed = v.api("/api/exchanges/{vhost}/clarion.fanout.routed")
    assert routed["type"] == "direct" and routed["durable"] is True
    keys = v.api("/api/exchanges/{vhost}/clarion.fanout.routed/bindings/source")
    assert {b["destination"] for b in keys if b["routing_key"] == ""} == expected


async def test_broker_blip_pod_delivers_what_its_queue_buffered(cluster: Cluster) -> None:
    """Pod b loses its AMQP connection and cannot get back in for a while;
    messages published through pod a meanwhile wait in b's queue and reach
    b's sockets once it reconnects, with no restart of the pod."""
    b = cluster.b
    listener = await cluster.connect(b, "blip-user")
    mgmt = httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10)
    try:
        # Keep pod b out: change its password, then force-close its connection.
        mgmt.put(f"/api/users/{cluster.b_user}", json={"password": "locked", "tags": ""})
        conns = await wait_for(
            lambda: [c for c in cluster.vhost.connections() if c["user"] == cluster.b_user],
            15,
            0.5,
            "pod b's AMQP connection in the management API",
        )
        for conn in conns:
            mgmt.delete(f"/api/connections/{quote(conn['name'], safe='')}")
        await wait_for(lambda: not b.ready(), 10, message="pod b /readyz 503")
        assert b.metric("clarion_broker_connected") == 0
        ids = [
            cluster.publish(cluster.a, {"user": "blip-user", "data": f"m{i}"}) for i in range(10)
        ]
        assert not b.ready()  # still out while we published
        assert not listener.closed  # the socket stayed open through the outage
        mgmt.put(f"/api/users/{cluster.b_user}", json={"password": "podb", "tags": ""})
        await wait_for(b.ready, 20, 0.2, "pod b ready again")
        await wait_for(lambda: len(listener.messages) >= 10, 15, message="buffered messages")
        assert [m["id"] for m in listener.messages] == ids
        assert b.metric("clarion_broker_connected") == 1
    finally:
        mgmt.put(f"/api/users/{cluster.b_user}", json={"password": "podb", "tags": ""})
        mgmt.close()
        await listener.close()


async def test_cli_listen_and_publish(cluster: Cluster) -> None:
    import sys

    listen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clarion",
        "listen",
        cluster.b.ws_url,
        "--user",
        "cli-user",
        "--channel",
        "cli-news",
        "--once",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Wait until the listener's socket is on pod b, then publish from the CLI.
        await wait_for(
            lambda: cluster.b.metric("clarion_subscriptions") >= 1,
            15,
            message="listener subscribed",
        )
        pub = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clarion",
            "publish",
            "--url",
            cluster.a.http_url,
            "--channel",
            "cli-news",
            '{"hello": "cli"}',
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(pub.communicate(), 20)
        assert pub.returncode == 0, err
        mid = out.decode().strip()
        assert len(mid) == 36
        assert listen.stdout is not None
        line = await asyncio.wait_for(listen.stdout.readline(), 15)
        import json

        msg = json.loads(line)
        assert msg["id"] == mid and msg["data"] == {"hello": "cli"}
        assert msg["target"] == {"channel": "cli-news"}
    finally:
        listen.kill()
        await listen.wait()
