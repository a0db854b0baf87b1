"""Routed delivery (``--routing direct``): a pod receives only what its sockets need.

Real pods on a real RabbitMQ; what is checked is what a user (or the operator of
the broker) sees: messages on sockets, bindings in the management API, /metrics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .support import MGMT_AUTH, MGMT_URL, GatewayProcess, PodFactory, Vhost, wait_for
from .wsclient import Client

pytestmark = pytest.mark.timeout(90)

AUTH = {"Authorization": "Bearer k"}
ROUTED = "clarion.fanout.routed"


@pytest.fixture(scope="module")
def pods(module_vhost: Vhost, module_pod_factory: PodFactory) -> Any:
    args = ["--auth", "none", "--api-key", "k", "--allow-client-publish"]
    made = module_pod_factory(
        2, "route", amqp_url=module_vhost.amqp_url, args=args, routing="direct"
    )
    return made, module_vhost


def keys_of(vhost: Vhost, pod: GatewayProcess) -> set[str]:
    """The routing keys the management API shows on the pod's queue."""
    path = f"/api/bindings/{{vhost}}/e/{ROUTED}/q/{quote('clarion.pod.' + pod.pod_name, safe='')}"
    return {b["routing_key"] for b in vhost.api(path)}


async def publish(api: httpx.AsyncClient, pod: GatewayProcess, body: Any) -> str:
    r = await api.post(f"{pod.http_url}/api/publish", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def connect(pod: GatewayProcess, user: str, query: str = "") -> Client:
    c = await Client.connect(f"{pod.ws_url}?user={quote(user)}{query}", user)
    await c.wait_welcome()
    return c


async def drop_connection(vhost: Vhost, pod: GatewayProcess) -> Callable[[], Awaitable[Any]]:
    """Close the pod's AMQP connection from the broker; returns a wait for it to be back."""
    failovers = pod.metric("clarion_broker_failovers_total")
    conns = await wait_for(
        lambda: [c for c in vhost.connections() if c.get("user_provided_name") == pod.pod_name],
        15,
        0.2,
        message=f"{pod.pod_name}'s connection in the management API",
    )
    with httpx.Client(base_url=MGMT_URL, auth=MGMT_AUTH, timeout=10) as mgmt:
        for c in conns:
            mgmt.delete(f"/api/connections/{quote(c['name'], safe='')}")
    return lambda: wait_for(
        lambda: pod.metric("clarion_broker_failovers_total") > failovers and pod.ready(),
        20,
        message=f"{pod.pod_name} back on a new connection",
    )


async def test_a_pod_holding_no_recipient_receives_no_targeted_message(pods: Any) -> None:
    (a, b), _ = pods
    user = f"u-{uuid.uuid4().hex[:6]}"
    client = await connect(a, user)
    consumed_b = b.metric("clarion_messages_consumed_total")
    consumed_a = a.metric("clarion_messages_consumed_total")
    try:
        async with httpx.AsyncClient(timeout=10) as api:
            for i in range(40):
                await publish(api, b, {"user": user, "data": i})
                await publish(api, b, {"user": f"absent-{uuid.uuid4().hex[:6]}", "data": i})
                await publish(api, b, {"channel": f"nobody-{i}", "data": i})
            await publish(api, b, {"broadcast": True, "data": "end"})
        await client.wait_data("end")
        assert client.data() == [*range(40), "end"]
        # Pod b published 121 messages and received only the broadcast; pod a only its
        # user's 40 and the broadcast.
        await wait_for(
            lambda: a.metric("clarion_messages_consumed_total") - consumed_a == 41,
            5,
            message="pod a consumed its 41",
        )
        assert b.metric("clarion_messages_consumed_total") - consumed_b == 1
    finally:
        await client.close()


async def test_bindings_follow_the_first_and_last_socket(pods: Any) -> None:
    (a, _b), vhost = pods
    user, channel = f"u-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    first = await connect(a, user)
    second = await connect(a, user)
    # Bound before the welcome: the management API shows it at once.
    assert f"u.{user}" in keys_of(vhost, a) and "" in keys_of(vhost, a)
    await first.send({"type": "subscribe", "channel": channel})
    await first.wait_reply("subscribed")
    await second.send({"type": "subscribe", "channel": channel})
    await second.wait_reply("subscribed")
    assert f"c.{channel}" in keys_of(vhost, a)
    assert a.metric("clarion_bindings") >= 2
    assert a.metric("clarion_bind_seconds_count") >= 2
    await first.send({"type": "unsubscribe", "channel": channel})
    await first.wait_reply("unsubscribed")
    await first.close()
    # The second socket still holds both: nothing is unbound.
    assert {f"u.{user}", f"c.{channel}"} <= keys_of(vhost, a)
    await second.send({"type": "unsubscribe", "channel": channel})
    await second.wait_reply("unsubscribed")
    await wait_for(lambda: f"c.{channel}" not in keys_of(vhost, a), 10, message="channel unbound")
    assert f"u.{user}" in keys_of(vhost, a)
    await second.close()
    await wait_for(lambda: f"u.{user}" not in keys_of(vhost, a), 10, message="user unbound")
    assert "" in keys_of(vhost, a)  # broadcasts and commands still come


async def test_nothing_published_right_after_the_welcome_is_lost_in_a_connect_storm(
    pods: Any,
) -> None:
    """Many new users at once: each is sent a message the moment its welcome arrives.

    The welcome comes only once the broker confirmed the user's binding, so every
    one of those messages arrives (without that wait, a storm loses some).
    """
    (a, b), _ = pods
    tag = uuid.uuid4().hex[:6]
    users = [f"storm-{tag}-{i}" for i in range(150)]
    async with httpx.AsyncClient(timeout=10) as api:

        async def one(user: str) -> Client:
            c = await Client.connect(f"{a.ws_url}?user={user}", user)
            await c.wait_welcome(20)
            await publish(api, b, {"user": user, "data": user})
            return c

        clients = await asyncio.gather(*(one(u) for u in users))
        try:
            for c, u in zip(clients, users, strict=True):
                await c.wait_data(u, 15)
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_a_channel_message_right_after_subscribed_arrives(pods: Any) -> None:
    (a, b), _ = pods
    client = await connect(a, f"u-{uuid.uuid4().hex[:6]}")
    channels = [f"sub-{uuid.uuid4().hex[:6]}-{i}" for i in range(60)]
    try:
        async with httpx.AsyncClient(timeout=10) as api:
            for ch in channels:
                await client.send({"type": "subscribe", "channel": ch})
            for n, ch in enumerate(channels, 1):
                await client.wait_reply("subscribed", n)
                await publish(api, b, {"channel": ch, "data": ch})
            for ch in channels:
                await client.wait_data(ch)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("user", "channel"),
    [
        ("ü" * 128, "é" * 128),  # 2 bytes each: over the 255 bytes of a routing key
        ("a" * 253, "b" * 253),  # "u." + 253 = 255 bytes: the longest plain key
        ("a" * 254, "b" * 254),  # one byte over: routed by digest
        ("user.with.dots", "chan.with.dots"),
        ("#", "a#b"),  # topic-exchange wildcards mean nothing to a direct exchange
    ],
)
async def test_names_of_any_length_and_alphabet_are_routed(
    pods: Any, user: str, channel: str
) -> None:
    (a, b), _ = pods
    other = f"u-{uuid.uuid4().hex[:6]}"
    client = await connect(a, user)
    bystander = await connect(a, other)
    try:
        await client.send({"type": "subscribe", "channel": channel})
        await client.wait_reply("subscribed")
        async with httpx.AsyncClient(timeout=10) as api:
            await publish(api, b, {"user": user, "data": "to user"})
            await publish(api, b, {"channel": channel, "data": "to channel"})
            await publish(api, b, {"user": other, "data": "end"})
        await bystander.wait_data("end")
        await client.wait_data("to channel")
        assert client.data() == ["to user", "to channel"]
        assert bystander.data() == ["end"]
    finally:
        await client.close()
        await bystander.close()


async def test_every_binding_is_restored_after_the_connection_is_lost(pods: Any) -> None:
    """The broker drops the pod's connection (its exclusive queue and bindings go with it):
    the pod binds every key again before it consumes, and catches up what was missed."""
    (a, b), vhost = pods
    tag = uuid.uuid4().hex[:6]
    users = [f"keep-{tag}-{i}" for i in range(100)]
    clients = await asyncio.gather(*(connect(a, u) for u in users))
    try:
        async with httpx.AsyncClient(timeout=10) as api:
            await publish(api, b, {"user": users[0], "data": "before"})
            await clients[0].wait_data("before")
            back = await drop_connection(vhost, a)
            # Published while pod a is (or was just) away: the catch-up brings it.
            during = await publish(api, b, {"user": users[1], "data": "during"})
            await back()
            assert {f"u.{u}" for u in users} <= keys_of(vhost, a)
            for u in users:
                await publish(api, b, {"user": u, "data": "after"})
        await clients[1].wait_data("during")
        for c in clients:
            await c.wait_data("after")
        assert [m["id"] for m in clients[1].messages].count(during) == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_pods_of_both_modes_deliver_to_each_other(
    vhost: Vhost, pod_factory: PodFactory
) -> None:
    """A rolling change of ``--routing``: publishers are the same in both modes."""
    fan, direct = (
        pod_factory(
            1,
            f"mixed-{mode}",
            amqp_url=vhost.amqp_url,
            args=["--auth", "none", "--api-key", "k"],
            routing=mode,
            start=False,
        )[0]
        for mode in ("fanout", "direct")
    )
    with pod_factory.start([fan, direct]):
        on_fan, on_direct = await connect(fan, "f-user"), await connect(direct, "d-user")
        try:
            async with httpx.AsyncClient(timeout=10) as api:
                await publish(api, fan, {"user": "d-user", "data": "from fanout"})
                await publish(api, direct, {"user": "f-user", "data": "from direct"})
                await publish(api, direct, {"broadcast": True, "data": "all"})
            await on_fan.wait_data("all")
            await on_direct.wait_data("all")
            assert on_fan.data() == ["from direct", "all"]
            assert on_direct.data() == ["from fanout", "all"]
        finally:
            await on_fan.close()
            await on_direct.close()


@pytest.mark.both_routings
async def test_a_catch_up_brings_no_message_from_before_a_socket_arrived(
    vhost: Vhost, pod_factory: PodFactory, routing: str
) -> None:
    """After a reconnect the pod reads history from before the last message it consumed
    (with routing, that can be long ago); a socket that arrived later gets only what was
    published after it arrived, as a live socket would."""
    a, b = pod_factory(
        2,
        "late",
        amqp_url=vhost.amqp_url,
        # No hellos in between: the last message pod b consumed stays the old one.
        args=["--auth", "none", "--api-key", "k", "--presence-interval", "120"],
        routing=routing,
        start=False,
    )
    with pod_factory.start([a, b]):
        early = await connect(b, "early")
        async with httpx.AsyncClient(timeout=10) as api:
            await publish(api, a, {"user": "early", "data": "consumed by b"})
            await early.wait_data("consumed by b")
            await publish(api, a, {"user": "late", "data": "before late arrived"})
            # The catch-up reads from 2 s before the last message consumed: arrive after.
            await asyncio.sleep(3)
            late = await connect(b, "late")
            await (await drop_connection(vhost, b))()
            await publish(api, a, {"user": "late", "data": "after"})
        try:
            await late.wait_data("after")
            assert late.data() == ["after"]
            assert early.data() == ["consumed by b"]
        finally:
            await late.close()
            await early.close()
