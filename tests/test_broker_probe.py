"""A broker that is slow to answer is waited for; only a silent (frozen) one is dropped.

A publish whose confirm is slow makes the pod check that its node answers at
all. Under a reconnect storm RabbitMQ answered a channel.open in more than
1.5 s while its heartbeats kept coming, and the pod dropped a live connection:
its exclusive queue was still locked by the old connection, every binding was
made again and every catch-up read the history, and the slow broker turned
into a cascade (issue 19). Here a proxy holds back what the pod sends (the
broker hears nothing, its heartbeats still arrive) or both directions (a
frozen node).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from clarion.broker.rabbitmq import RabbitBroker
from clarion.config import Settings
from clarion.gateway import broker_options
from clarion.message import Envelope, Target
from testkit.net import TcpProxy

from .support import Vhost, wait_for
from .test_fast_consume import Listener

pytestmark = pytest.mark.timeout(60)


class Counting(Listener):
    def __init__(self) -> None:
        super().__init__()
        self.connects = 0
        self.downs = 0

    def on_state(self, up: bool) -> None:
        super().on_state(up)
        self.downs += not up

    def on_connected(self, address: str, reconnect_seconds: float | None) -> None:
        self.connects += 1


@pytest.fixture
async def through_proxy(
    vhost: Vhost,
) -> AsyncIterator[tuple[RabbitBroker, Counting, TcpProxy]]:
    proxy = await TcpProxy([5672]).start()
    name = f"probe-{uuid.uuid4().hex[:6]}"
    options = broker_options(Settings(auth="none", pod_name=name, routing="fanout"))
    url = vhost.amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    assert str(proxy.port) in url
    broker = RabbitBroker(url, name, options)
    listener = Counting()
    await broker.start(listener)
    try:
        await wait_for(lambda: broker.ready, 10, message="consuming")
        yield broker, listener, proxy
    finally:
        proxy.to_server.set()
        proxy.to_client.set()
        await broker.stop()
        await proxy.close()


async def test_a_slow_broker_keeps_its_connection(
    through_proxy: tuple[RabbitBroker, Counting, TcpProxy],
) -> None:
    broker, listener, proxy = through_proxy
    o = broker.options
    proxy.to_server.clear()  # the broker hears nothing; its heartbeats still come
    publish = asyncio.ensure_future(broker.publish([Envelope.create(Target("user", "u"), 1)]))
    # Longer than the old probe gave a node (probe_after + probe_timeout), shorter than a
    # broker waits for a client's heartbeat.
    await asyncio.sleep(o.probe_after + o.probe_timeout + 1.0)
    assert not publish.done()
    proxy.to_server.set()
    await asyncio.wait_for(publish, o.publish_timeout)  # confirmed: nothing refused
    await wait_for(lambda: len(listener.envelopes) == 1, 10, message="the message consumed")
    assert (listener.connects, listener.downs) == (1, 0)
    assert broker.ready


async def test_a_pod_busy_longer_than_the_probe_keeps_its_connection(
    through_proxy: tuple[RabbitBroker, Counting, TcpProxy],
) -> None:
    """The pod's own loop was busy (a connect storm on a saturated core) while the probe
    waited: the broker's frames came meanwhile, unread; the node is not judged silent."""
    broker, listener, proxy = through_proxy
    # A node silent for 2 s is condemned (as with a 2 s heartbeat): the block below
    # is longer than that and stays inside the publish's timeout.
    o = broker.options = dataclasses.replace(broker.options, heartbeat=2)
    proxy.to_server.clear()  # the confirm is slow to come: the probe starts
    publish = asyncio.ensure_future(broker.publish([Envelope.create(Target("user", "u"), 1)]))
    await asyncio.sleep(o.probe_after + 0.2)
    assert broker._probing
    # Blocked past the probe's wait, and longer than it lets a node be silent: the
    # heartbeats that came meanwhile are unread.
    time.sleep(max(o.probe_timeout, o.heartbeat) + 0.2)
    proxy.to_server.set()
    await asyncio.wait_for(publish, o.publish_timeout)
    assert (listener.connects, listener.downs) == (1, 0)
    assert broker.ready


async def test_a_frozen_broker_is_dropped_within_seconds(
    through_proxy: tuple[RabbitBroker, Counting, TcpProxy],
) -> None:
    broker, listener, proxy = through_proxy
    o = broker.options
    proxy.to_server.clear()
    proxy.to_client.clear()  # nothing either way: a frozen node
    publish = asyncio.ensure_future(broker.publish([Envelope.create(Target("user", "u"), 1)]))
    limit = o.probe_after + max(o.probe_timeout, o.heartbeat) + o.probe_timeout + 1.0
    await wait_for(lambda: listener.downs == 1, limit, message="the frozen connection dropped")
    proxy.to_server.set()
    proxy.to_client.set()
    # A new connection, not the old one thawed: the pod reports it once its consumer is on
    # (after ``ready``, which it is from the moment it starts consuming).
    await wait_for(lambda: listener.connects == 2 and broker.ready, 20, message="connected again")
    publish.cancel()
