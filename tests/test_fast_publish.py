"""The pods publish through fastpublish.py's fast path, on a real broker.

fastpublish.py reaches into aiormq's channel (its delivery tags, its confirmation
futures); an aiormq upgrade that renamed what it uses would silently fall back to a
``basic_publish`` per message, and one that changed what they mean would match
confirms to the wrong messages. These tests fail if either happens: the fast path is
engaged, a batch arrives whole and in order (a body over several frames too), and
every Ack, Nack, Return, channel close and timeout lands on its own message, also
when fast and aiormq's own publishes share a channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import httpx
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from clarion.broker import fastpublish
from clarion.broker.codec import envelope_properties
from clarion.broker.rabbitmq import RabbitBroker, _failed, _may_resend, _publish
from clarion.message import Envelope, Target

from . import test_fast_consume
from .support import PodFactory, Vhost, wait_for
from .test_fast_consume import Listener
from .wsclient import Client

pytestmark = pytest.mark.timeout(60)

#: Queues of the raw-channel tests: one that takes everything, one that refuses
#: everything (every publish to it is nacked), and a name no queue has (returned).
OK, FULL, NOWHERE = "fp-ok", "fp-full", "fp-nowhere"


def published(listener: Listener, path: str) -> float:
    """``clarion_broker_publish_total{path}`` as /metrics shows it."""
    value = listener.metrics.registry.get_sample_value(
        "clarion_broker_publish_total", {"path": path}
    )
    assert value is not None, f"no clarion_broker_publish_total{{path={path!r}}}"
    return value


#: A pod's broker, consuming (test_fast_consume.py's fixture).
consuming = test_fast_consume.consuming


@pytest.fixture
def broker(consuming: tuple[RabbitBroker, Listener]) -> tuple[RabbitBroker, Listener]:
    """... counting its publishes by path in the listener's metrics, as the gateway does."""
    b, listener = consuming
    b.publish_counts = listener.metrics.publishes
    return consuming


@pytest.fixture
async def channel(vhost: Vhost) -> AsyncIterator[aiormq.Channel]:
    """A confirming aiormq channel of its own, and the queues ``OK`` and ``FULL``."""
    conn = await aiormq.connect(vhost.amqp_url)
    try:
        # As aio-pika opens the pod's publishing channel: a return resolves the confirm.
        ch = await conn.channel(publisher_confirms=True, on_return_raises=False)
        assert isinstance(ch, aiormq.Channel)
        await ch.queue_declare(OK)
        await ch.queue_declare(FULL, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        yield ch
    finally:
        await conn.close()


def message(key: str, data: Any = None) -> fastpublish.Message:
    env = Envelope.create(Target("user", "u1"), data)
    return (key, env.body, envelope_properties(env))


def outcome(result: object) -> str:
    """What a publish came to, by kind (the fast path and aiormq's own must agree)."""
    if isinstance(result, Basic.Ack):
        return "ack"
    if isinstance(result, aiormq.exceptions.DeliveryError) and isinstance(result.frame, Basic.Nack):
        return "nack"  # aiormq raises a nack
    if isinstance(result, DeliveredMessage) and isinstance(result.delivery, Basic.Return):
        return "returned"
    return type(result).__name__


def expected(key: str) -> str:
    return {OK: "ack", FULL: "nack", NOWHERE: "returned"}[key]


async def test_the_fast_path_is_engaged_and_a_batch_arrives_whole_and_in_order(
    broker: tuple[RabbitBroker, Listener],
) -> None:
    b, listener = broker
    underlay = await b._pub_channel.get_underlay_channel()  # type: ignore[union-attr]
    assert isinstance(underlay, aiormq.Channel)
    # The names fastpublish.py relies on exist (a pinned version that changed them fails here).
    assert fastpublish._supported(underlay)
    big = "x" * (2 * underlay.max_content_size + 100)  # three body frames
    envs = [Envelope.create(Target("user", f"u{i % 3}"), {"n": i}) for i in range(200)]
    envs.insert(100, Envelope.create(Target("channel", "c"), {"big": big}, key="k1"))
    envs.append(Envelope.create_command("disconnect", Target("user", "u1"), {}))
    await b.publish(envs)
    await wait_for(lambda: len(listener.envelopes) >= len(envs), 10, message="all consumed")
    # Ids, targets, keys, commands (the headers) and bodies: all as published, in order.
    assert listener.envelopes == envs
    assert (published(listener, "fast"), published(listener, "fallback")) == (len(envs), 0)


async def test_properties_and_bodies_are_what_basic_publish_sends(channel: aiormq.Channel) -> None:
    size = channel.max_content_size
    bodies = [b"", b"a", b"b" * (size - 1), b"c" * size, b"d" * (3 * size + 7)]
    messages = [
        (OK, body, envelope_properties(Envelope.create(Target("channel", f"c{i}"), i)))
        for i, body in enumerate(bodies)
    ]
    results = await fastpublish.publish(channel, "", messages, 10)
    assert [outcome(r) for r in results] == ["ack"] * len(bodies)
    for _, body, props in messages:
        got = await channel.basic_get(OK, no_ack=True, timeout=5)
        assert got.body == body
        p = got.header.properties
        assert (p.message_id, p.content_type, p.delivery_mode) == (
            props.message_id,
            "application/json",
            1,
        )
        assert p.headers == props.headers


async def test_acks_nacks_and_returns_land_on_their_own_messages(channel: aiormq.Channel) -> None:
    keys = [OK, FULL, NOWHERE, OK, OK, FULL, NOWHERE, NOWHERE, OK, FULL] * 5
    messages = [message(k, i) for i, k in enumerate(keys)]
    results = await fastpublish.publish(channel, "", messages, 10)
    assert [outcome(r) for r in results] == [expected(k) for k in keys]
    for (_, _, props), r in zip(messages, results, strict=True):
        if isinstance(r, DeliveredMessage):  # the Return is the message's own
            assert r.header.properties.message_id == props.message_id
    # What rabbitmq.py makes of them, as of aiormq's own basic_publish: a nack fails and
    # may be sent again; a return (aiormq resolves the confirm with the returned message:
    # the pod's channel has no on_return_raises) fails and is not sent again.
    assert [(_failed(r), _may_resend(r)) for r in results[:3]] == [
        (False, False),
        (True, True),
        (True, False),
    ]
    assert channel.confirmations == {}
    assert channel.message_id_delivery_tag == {}


async def test_fast_and_aiormqs_own_publishes_share_a_channel(
    broker: tuple[RabbitBroker, Listener], vhost: Vhost
) -> None:
    """Interleaved on one channel, each publish's tag is its own: every outcome matches."""
    b, _ = broker
    pub = b._pub_channel
    assert pub is not None
    underlay = await pub.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    await underlay.queue_declare(OK)
    await underlay.queue_declare(
        FULL, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    pattern = [OK, NOWHERE, FULL, OK]
    calls: list[Any] = []
    wanted: list[list[str]] = []
    for round_ in range(12):
        keys = [pattern[(round_ + j) % 4] for j in range(1 + round_ % 5)]
        wanted.append([expected(k) for k in keys])
        calls.append(fastpublish.publish(underlay, "", [message(k) for k in keys], 10))
        key = pattern[round_ % 4]
        env = Envelope.create(Target("user", "u1"), round_)
        wanted.append([expected(key)])
        calls.append(_one(_publish(pub, "", env, key, 10)))
    results = await asyncio.gather(*calls)
    assert [[outcome(r) for r in rs] for rs in results] == wanted
    assert underlay.confirmations == {}
    # ... and the pod's own batches (fast) go on matching after them.
    await b.publish([Envelope.create(Target("user", "u1"), "after")])


async def _one(call: Any) -> list[object]:
    try:
        return [await call]
    except Exception as exc:
        return [exc]


async def test_a_channel_closed_before_the_confirms_fails_them_for_a_resend(
    channel: aiormq.Channel,
) -> None:
    """A publish to a missing exchange closes the channel (404): every future of the batch
    gets the close, as aiormq's own do, and rabbitmq.py sends them again."""
    messages = [message(OK, i) for i in range(20)]
    results = await fastpublish.publish(channel, "no-such-exchange", messages, 10)
    assert {type(r) for r in results} == {aiormq.exceptions.ChannelNotFoundEntity}
    assert all(_failed(r) and _may_resend(r) for r in results)
    # Now closed: refused without a write, as basic_publish refuses it.
    again = await fastpublish.publish(channel, "", messages, 10)
    assert {type(r) for r in again} == {aiormq.exceptions.ChannelInvalidStateError}
    assert all(_may_resend(r) for r in again)


async def test_a_timeout_fails_the_unconfirmed_and_the_tags_stay_in_step(
    channel: aiormq.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiormq")
    results = await fastpublish.publish(channel, "", [message(OK, i) for i in range(10)], 1e-6)
    assert {type(r) for r in results} == {TimeoutError}
    assert not any(_may_resend(r) for r in results)  # a timeout has used the publish's time
    # A cancelled one gives its confirms up too.
    task = asyncio.ensure_future(fastpublish.publish(channel, "", [message(OK)] * 3, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The late acks are dropped; what follows is matched to its own tags.
    keys = [FULL, OK, NOWHERE] * 4
    later = await fastpublish.publish(channel, "", [message(k) for k in keys], 10)
    assert [outcome(r) for r in later] == [expected(k) for k in keys]
    assert "Unexpected confirmation frame" not in caplog.text
    await wait_for(lambda: not channel.confirmations, 5, message="late acks taken")


@pytest.fixture
def no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """An aiormq whose internals changed (asked for at each channel's first publish)."""
    monkeypatch.setattr(fastpublish, "_supported", lambda channel: False)


async def test_without_the_fast_path_batches_still_publish(
    no_fast_path: None,
    broker: tuple[RabbitBroker, Listener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fallback (a basic_publish per message) publishes too, and says so."""
    b, listener = broker
    envs = [Envelope.create(Target("user", "u1"), {"n": i}) for i in range(20)]
    await b.publish(envs[:10])
    await b.publish(envs[10:])
    await wait_for(lambda: listener.envelopes == envs, 10, message="all consumed")
    # ... counted, so the dashboard shows it (a log line alone goes unseen); logged once.
    assert (published(listener, "fast"), published(listener, "fallback")) == (0, len(envs))
    assert caplog.text.count("publishing without the fast path") == 1


@pytest.mark.timeout(90)
async def test_pods_publish_through_the_fast_path(vhost: Vhost, pod_factory: PodFactory) -> None:
    """End to end: a batch request to one pod reaches a socket on the other; the pod's
    /metrics counts it as published by the fast path."""
    a, b = pod_factory(2, "fastpub", amqp_url=vhost.amqp_url)
    client = await Client.connect(f"{b.ws_url}?user=u1", "u1")
    await client.wait_welcome()
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{a.http_url}/api/publish",
            json={"messages": [{"user": "u1", "data": i} for i in range(30)]},
        )
    assert r.status_code == 202, r.text
    await client.until(lambda: len(client.messages) >= 30, 15, "30 messages")
    assert [m["data"] for m in client.messages] == list(range(30))
    assert a.metric("clarion_broker_publish_total", {"path": "fast"}) >= 30
    assert a.metric("clarion_broker_publish_total", {"path": "fallback"}) == 0
    await client.close()
