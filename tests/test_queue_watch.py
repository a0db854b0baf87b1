"""A pod whose queue the broker forgot finds out, comes back and catches up.

RabbitMQ 3.10 (Debian's) deletes the exclusive queues of a node it lost *by
name*, on every surviving node, from a list of names each node took a moment
before (``rabbit_amqqueue:on_node_down``). A pod that lost that node and
declared its queue again on another node in between has its new queue's record
and bindings deleted while the queue process and the pod's consumer live on:
the consumer is never cancelled, publishes are still confirmed (the history
stream has them), and nothing reaches the pod again. It showed once in the HA
freeze test (488 accepted messages never delivered after pod A moved to node 2).

Here the broker does exactly what that race does, on purpose: the queue's record
and its bindings are deleted in one Mnesia transaction (``rabbitmqctl eval``),
its process and consumer left alone. The pod must notice within its check
interval, declare and bind again, and catch up from the history stream: every
message published meanwhile arrives, once.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from clarion.broker.rabbitmq import RabbitBroker
from clarion.config import Settings
from clarion.gateway import broker_options
from clarion.message import Envelope, Target

from .support import Vhost, wait_for
from .test_fast_consume import Listener

pytestmark = pytest.mark.timeout(60)

USER = Target("user", "watched")


def forget_queue(vhost: str, queue: str) -> None:
    """What ``on_node_down`` does to a queue it has on its list: record and bindings, by name."""
    name = f'rabbit_misc:r(<<"{vhost}">>, queue, <<"{queue}">>)'
    expr = (
        f"Q = {name}, rabbit_misc:execute_mnesia_transaction(fun() -> "
        "ok = mnesia:delete({rabbit_queue, Q}), "
        "rabbit_binding:remove_transient_for_destination(Q) end), ok."
    )
    out = subprocess.run(
        ["rabbitmqctl", "eval", expr], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def queue_exists(vhost: Vhost, queue: str) -> bool:
    return any(q["name"] == queue for q in vhost.queues())


@pytest.fixture(params=["direct", "fanout"])
async def pod(
    vhost: Vhost, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RabbitBroker, Listener]]:
    name = f"watch-{uuid.uuid4().hex[:6]}"
    options = broker_options(Settings(auth="none", pod_name=name, routing=request.param))
    broker = RabbitBroker(vhost.amqp_url, name, options)
    listener = Listener()
    await broker.start(listener)
    try:
        await wait_for(lambda: broker.ready, 10, message="consuming")
        broker.route(USER, True)
        await asyncio.wait_for(broker.routed(USER), 10)
        yield broker, listener
    finally:
        await broker.stop()


async def test_a_queue_the_broker_forgot_is_declared_again_and_nothing_is_lost(
    pod: tuple[RabbitBroker, Listener], vhost: Vhost
) -> None:
    broker, listener = pod
    before = Envelope.create(USER, {"n": 0})
    await broker.publish([before])
    await wait_for(lambda: before in listener.envelopes, 10, message="the first message")

    forget_queue(vhost.name, broker.queue_name)
    assert not queue_exists(vhost, broker.queue_name)
    # Accepted: the history stream takes it, though no pod queue does now.
    during = [Envelope.create(USER, {"n": i}) for i in range(1, 6)]
    for env in during:
        await broker.publish([env])

    check = broker.options.queue_check_interval
    await wait_for(
        lambda: all(e in listener.envelopes for e in during),
        check + 15,
        message="the messages published while the queue was forgotten",
    )
    assert queue_exists(vhost, broker.queue_name)
    after = Envelope.create(USER, {"n": 6})
    await broker.publish([after])
    await wait_for(lambda: after in listener.envelopes, 10, message="a live message after")
