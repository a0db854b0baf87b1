"""Consuming a queue at the cost of aiormq's frame reading alone: no object or task per message.

aio-pika's ``queue.consume`` builds an ``IncomingMessage`` for every delivery
and runs the callback in a task of its own, inside the task aiormq's channel
reader creates per delivery: two tasks and a dozen attribute copies per
message, more than the pod's own work on a message it holds no socket for
(docs/performance.md, "Consume path"). Here the channel reader calls a plain
function instead, with the delivery frame, the content header and the body.

This reaches into aiormq's channel (as channels.py does, for closes): its reader
awaits ``self._on_deliver_frame(frame)`` for every Basic.Deliver, and reads
the content frames that follow with ``self._get_frame()``; ``consume`` puts
its own ``_on_deliver_frame`` on the channel instance. pyproject pins the
aiormq versions this was written against; if a version lacks these names,
``consume`` falls back to aiormq's own per-delivery task (still without
aio-pika's objects), logs a warning and counts every delivery it takes as a
``fallback`` (``clarion_broker_consume_total{path}``, on the dashboard);
tests/test_fast_consume.py fails then.

The broker's liveness check reads one more private name here: when the
connection last received any frame (``last_frame_age``), so that a busy but
live broker is told from a frozen one (tests/test_broker_probe.py).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from .base import PathCounts

log = logging.getLogger("clarion.broker")

#: Called for every delivery, synchronously, in aiormq's channel reader; must not raise.
OnDelivery = Callable[[aiormq.Channel, Basic.Deliver, ContentHeader, bytes], None]


def _supported(channel: Any) -> bool:
    reader = getattr(type(channel), "_reader", None)
    return (
        isinstance(channel, aiormq.Channel)
        and callable(getattr(type(channel), "_on_deliver_frame", None))
        and callable(getattr(channel, "_get_frame", None))
        and reader is not None
        and "_on_deliver_frame" in reader.__code__.co_names
    )


def last_frame_age(connection: object) -> float | None:
    """Seconds since aiormq's connection last read a frame from the broker (heartbeats
    included); None if this aiormq version does not say."""
    last = getattr(connection, "_Connection__last_frame_time", None)
    loop = getattr(connection, "loop", None)
    if not isinstance(last, float) or loop is None:
        return None
    return float(loop.time() - last)


async def consume(
    channel: aiormq.Channel,
    queue: str,
    on_delivery: OnDelivery,
    arguments: dict[str, Any] | None = None,
    counts: PathCounts | None = None,
) -> str:
    """Consume ``queue`` (acks by the caller; ``arguments`` as basic.consume takes them,
    e.g. a stream's ``x-stream-offset``); returns the consumer tag. Each delivery is
    counted in ``counts`` by the path it took."""
    tally = PathCounts() if counts is None else counts

    async def slow(message: DeliveredMessage) -> None:
        assert isinstance(message.delivery, Basic.Deliver)
        tally.fallback += 1
        on_delivery(channel, message.delivery, message.header, message.body)

    if _supported(channel):
        _install(channel, on_delivery, tally)
    else:
        log.warning(
            "aiormq %s: consuming without the fast path", importlib.metadata.version("aiormq")
        )
    ok = await channel.basic_consume(queue, slow, no_ack=False, arguments=arguments)
    assert ok.consumer_tag is not None
    return ok.consumer_tag


def _install(channel: Any, on_delivery: OnDelivery, tally: PathCounts) -> None:
    get_frame = channel._get_frame
    original = channel._on_deliver_frame

    async def on_deliver_frame(frame: Basic.Deliver) -> None:
        if frame.consumer_tag not in channel.consumers:
            # Not consumed through here (nor cancelled): aiormq's own way.
            await original(frame)
            return
        header = await get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"Unexpected frame {header!r} instead of ContentHeader", header)
        size = header.body_size
        body = b""
        if size:
            content = await get_frame()
            if not isinstance(content, ContentBody):
                raise ValueError(f"Unexpected frame {content!r}", content)
            body = content.value
            if len(body) < size:
                # A body larger than the frame size comes in several frames.
                parts = [body]
                got = len(body)
                while got < size:
                    content = await get_frame()
                    if not isinstance(content, ContentBody):
                        raise ValueError(f"Unexpected frame {content!r}", content)
                    parts.append(content.value)
                    got += len(content.value)
                body = b"".join(parts)
        tally.fast += 1
        try:
            on_delivery(channel, frame, header, body)
        except Exception:  # pragma: no cover - on_delivery catches its own; the reader must live
            log.exception("consumer failed on delivery %s", frame.delivery_tag)

    channel._on_deliver_frame = on_deliver_frame
