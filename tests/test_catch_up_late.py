"""A catch-up reaches back as far as a message can arrive late.

A message's ``ts`` is set when the API accepts it; it reaches the broker up to
``publish_timeout`` later: a publish whose connection died before its confirm
is sent again over the pod's new connection, and a 202 still follows
(RabbitBroker.publish). A pod that lost its broker meanwhile reads the history
from shortly before the last message it consumed; when "shortly" was shorter
than that delay (2 s against 5), such a message was accepted and never reached
the pod's sockets: its queue was gone when it arrived and the catch-up started
after its ``ts``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from clarion.broker.rabbitmq import RabbitBroker
from clarion.config import Settings
from clarion.gateway import broker_options
from clarion.message import Envelope, Target, new_message_id
from testkit.net import TcpProxy, free_port

from .support import Vhost, wait_for
from .test_fast_consume import Listener

pytestmark = pytest.mark.timeout(60)


def late(envelope: Envelope, ms: int) -> Envelope:
    """The same message, accepted ``ms`` before now (its first publish died with a connection)."""
    ts = envelope.ts - ms
    mid = new_message_id(ts)  # the id carries the time too
    frame = orjson.loads(envelope.body) | {"ts": ts, "id": mid}
    return dataclasses.replace(envelope, id=mid, ts=ts, body=orjson.dumps(frame))


@pytest.fixture
async def two_pods(
    vhost: Vhost,
) -> AsyncIterator[tuple[RabbitBroker, RabbitBroker, Listener, TcpProxy]]:
    """A publishing pod, and a consuming pod whose link to the broker the test can cut."""
    proxy = await TcpProxy([5672]).start()
    started: list[RabbitBroker] = []
    try:
        brokers = []
        for via in (None, proxy.port):
            name = f"late-{uuid.uuid4().hex[:6]}"
            options = broker_options(Settings(auth="none", pod_name=name, routing="fanout"))
            url = vhost.amqp_url
            if via is not None:
                url = url.replace("127.0.0.1:5672", f"127.0.0.1:{via}")
                assert str(via) in url
            brokers.append(RabbitBroker(url, name, options))
        publisher, consumer = brokers
        listeners = [Listener(), Listener()]
        for broker, listener in zip(brokers, listeners, strict=True):
            await broker.start(listener)
            started.append(broker)
            await wait_for(lambda b=broker: b.ready, 10, message="consuming")
        yield publisher, consumer, listeners[1], proxy
    finally:
        for broker in started:
            await broker.stop()
        await proxy.close()


async def test_a_message_accepted_before_the_last_consumed_one_is_caught_up(
    two_pods: tuple[RabbitBroker, RabbitBroker, Listener, TcpProxy],
) -> None:
    publisher, consumer, listener, proxy = two_pods
    everyone = Target("broadcast")
    timeout = publisher.options.publish_timeout
    assert timeout >= 4, "the test assumes the default publish_timeout (5 s)"

    last = Envelope.create(everyone, {"n": "last consumed"})
    await publisher.publish([last])
    await wait_for(lambda: last.id in {e.id for e in listener.envelopes}, 10, message="consumed")

    # The consuming pod loses the broker (its queue goes with its connection) and
    # cannot reconnect for a while.
    proxy.ports = [free_port()]
    proxy.cut()
    await wait_for(lambda: not consumer.ready, 10, message="the consumer cut off")

    # Meanwhile a message the API accepted (timeout - 1) s before the last one
    # reaches the broker: sent again over its pod's new connection.
    straggler = late(
        Envelope.create(everyone, {"n": "accepted earlier"}), int((timeout - 1) * 1000)
    )
    assert straggler.ts < last.ts
    await publisher.publish([straggler])

    proxy.ports = [5672]
    await wait_for(lambda: consumer.ready, 20, message="the consumer back")
    await wait_for(
        lambda: straggler.id in {e.id for e in listener.envelopes},
        10,
        message="the late message caught up from the history",
    )
