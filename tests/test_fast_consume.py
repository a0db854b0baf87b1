"""The pod consumes its queue through fastconsume.py's fast path, on a real broker.

fastconsume.py reaches into aiormq's channel; an aiormq upgrade that renamed
what it replaces would silently fall back to a task per delivery (and cost
every message again what docs/performance.md, "Consume path", took off).
These tests fail if it does, and check that what the fast path hands over
(ids, targets, keys, commands, markers, malformed messages, acks) is what
the broker carried.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import pytest

from clarion.broker import fastconsume
from clarion.broker.base import At
from clarion.broker.codec import envelope_to_message, marker_message
from clarion.broker.rabbitmq import RabbitBroker
from clarion.config import Settings
from clarion.gateway import broker_options
from clarion.message import Envelope, Target
from clarion.metrics import Metrics

from .support import Vhost, wait_for

pytestmark = pytest.mark.timeout(60)


class Listener:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        #: The task each message was handed over in.
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.up = False
        #: The pod's metrics, counting the broker's deliveries by path as a pod's do.
        self.metrics = Metrics()

    def consumed(self, path: str) -> float:
        """``clarion_broker_consume_total{path}`` as /metrics shows it."""
        value = self.metrics.registry.get_sample_value(
            "clarion_broker_consume_total", {"path": path}
        )
        assert value is not None, f"no clarion_broker_consume_total{{path={path!r}}}"
        return value

    def on_message(self, env: Envelope, caught_up: bool = False) -> object:
        self.envelopes.append(env)
        self.tasks.append(asyncio.current_task())
        return 0

    def on_state(self, up: bool) -> None:
        self.up = up

    def on_gap(self) -> None: ...

    def on_bound(self, seconds: float) -> None: ...

    def on_bind_error(self, keys: int) -> None: ...

    def on_connected(self, address: str, reconnect_seconds: float | None) -> None: ...


@pytest.fixture
async def consuming(vhost: Vhost) -> AsyncIterator[tuple[RabbitBroker, Listener]]:
    """A pod's broker (``--routing fanout``: everything reaches it), consuming."""
    name = f"fast-{uuid.uuid4().hex[:6]}"
    options = broker_options(Settings(auth="none", pod_name=name, routing="fanout"))
    broker = RabbitBroker(vhost.amqp_url, name, options)
    listener = Listener()
    broker.consume_counts = listener.metrics.consumes  # as the gateway does
    await broker.start(listener)
    try:
        await wait_for(lambda: broker.ready, 10, message="consuming")
        yield broker, listener
    finally:
        await broker.stop()


async def test_deliveries_reach_the_pod_without_a_task_each(
    consuming: tuple[RabbitBroker, Listener],
) -> None:
    broker, listener = consuming
    envs = [Envelope.create(Target("user", "u1"), {"n": i}) for i in range(50)]
    envs.append(Envelope.create(Target("channel", "c"), {"big": "x" * 300_000}, key="k1"))
    envs.append(Envelope.create_command("disconnect", Target("user", "u1"), {}))
    await broker.publish(envs)
    await wait_for(lambda: len(listener.envelopes) == len(envs), 10, message="all consumed")
    assert listener.envelopes == envs  # bodies over several frames too
    # All in aiormq's channel reader: one task for every delivery, not one each.
    assert len({id(t) for t in listener.tasks}) == 1
    assert "_reader" in repr(listener.tasks[0])
    assert (listener.consumed("fast"), listener.consumed("fallback")) == (len(envs), 0)


async def test_markers_and_malformed_messages_are_dropped_and_acked(
    consuming: tuple[RabbitBroker, Listener], vhost: Vhost, caplog: pytest.LogCaptureFixture
) -> None:
    broker, listener = consuming
    conn = await aio_pika.connect(vhost.amqp_url)
    try:
        ch = await conn.channel()
        ex = await ch.get_exchange(broker.options.exchange)
        await ex.publish(marker_message("m1"), "")
        await ex.publish(aio_pika.Message(b"{}", message_id="x", headers={}), "")
        good = Envelope.create(Target("broadcast"), {"ok": True})
        await ex.publish(envelope_to_message(good), "")
    finally:
        await conn.close()
    await wait_for(lambda: listener.envelopes == [good], 10, message="the good one")
    assert "dropping malformed broker message x" in caplog.text

    def unacked() -> int:
        q = vhost.api(f"/api/queues/{{vhost}}/{broker.queue_name}")
        return int(q.get("messages_unacknowledged", -1)) + int(q.get("messages_ready", -1))

    await wait_for(lambda: unacked() == 0, 15, interval=0.5, message="all three acked")


async def test_the_fast_path_is_engaged_on_this_aiormq() -> None:
    # The names fastconsume.py replaces exist (a pinned version that changed them fails here).
    assert fastconsume._supported(aiormq.Channel.__new__(aiormq.Channel))


@pytest.fixture
def no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """An aiormq whose internals changed (requested before ``consuming``: set up first)."""
    monkeypatch.setattr(fastconsume, "_supported", lambda channel: False)


async def test_without_the_fast_path_deliveries_still_arrive(
    no_fast_path: None, consuming: tuple[RabbitBroker, Listener]
) -> None:
    """The fallback (aiormq's task per delivery) delivers too."""
    broker, listener = consuming
    envs = [Envelope.create(Target("user", "u1"), {"n": i}) for i in range(20)]
    await broker.publish(envs)
    await wait_for(lambda: listener.envelopes == envs, 10, message="all consumed")
    assert len({id(t) for t in listener.tasks}) > 1  # tasks of their own: the fallback
    # ... and counted, so the dashboard shows it (a log line alone goes unseen).
    assert (listener.consumed("fast"), listener.consumed("fallback")) == (0, len(envs))


async def test_history_reads_leave_the_pods_connection_alone(
    consuming: tuple[RabbitBroker, Listener],
) -> None:
    """A history read consumes the stream on a channel of its own through the same fast
    path; its acks must never reach the broker after that channel's close (a method on a
    channel being closed or reopened costs the whole connection: CHANNEL_ERROR)."""
    broker, listener = consuming
    envs = [Envelope.create(Target("user", f"u{i % 7}"), {"n": i}) for i in range(1200)]
    await broker.publish(envs)
    connected = broker._conn
    live = listener.consumed("fast")
    for _ in range(12):
        seen: list[str] = []
        nxt = await broker.read_stream(At(envs[0].ts), lambda e, _o, s=seen: s.append(e.id), 10)
        assert nxt is not None
        assert {e.id for e in envs} <= set(seen)
        # Up to an offset, then on from it: the same messages, each once.
        first = await broker.read_stream(0, lambda e, _o: None, 10, until=5)
        assert first == 5
    await asyncio.sleep(0.1)  # a bad frame would have cost the connection by now
    assert broker._conn is connected and broker.ready
    # The reads' deliveries count as the pod queue's do: twelve full reads at least.
    assert listener.consumed("fast") - live >= 12 * len(envs)
    assert listener.consumed("fallback") == 0
    await broker.publish([Envelope.create(Target("user", "after"), 1)])
    await wait_for(lambda: listener.envelopes[-1].target.name == "after", 10, message="live")
