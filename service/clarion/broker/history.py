"""Reading the history stream from a point in time (or an offset) up to "now".

The stream has no end-of-stream marker, so the reader publishes one (a tiny
message every pod ignores): everything published before the read began is in
the stream before it. Timestamps attach per chunk with 1 s resolution, so the
read starts a little early; callers skip by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ..message import Envelope, new_message_id
from . import fastconsume
from .base import At, PathCounts, Position
from .channels import close_channel
from .codec import Marker, marker_message, message_to_envelope
from .routing import MARKER_KEY

log = logging.getLogger("clarion.broker")

#: The read starts this long before the time asked for (chunk timestamps are coarse).
EARLY_S = 2
#: The earliest and latest instants a stream offset can name.
_MIN_TS = datetime(1970, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def offset_of(since_ms: int) -> datetime:
    """The stream offset to start reading at for ``since_ms``, clamped to valid dates."""
    seconds = min(max(_MIN_TS, since_ms / 1000 - EARLY_S), _MAX_TS)
    return datetime.fromtimestamp(seconds, tz=UTC)


#: Deliveries in flight to a reader (a stream consumer needs a prefetch), and how
#: many it acks at once (an ack is only credit: the stream keeps every message). A
#: read that stops at an offset takes fewer: what is in flight past it must still be
#: read off the socket before the channel closes (2,000 of them cost 0.3 s; with 100
#: in flight a long read is held to about 1,600 messages/s by the credit round trips).
PREFETCH = 2000
PREFETCH_UNTIL = 500


async def read_stream(
    conn: AbstractConnection,
    exchange: AbstractExchange,
    stream: str,
    start: Position | At,
    each: Callable[[Envelope, int], object],
    timeout: float,
    publish_timeout: float,
    until: Position | None = None,
    counts: PathCounts | None = None,
) -> Position | None:
    """Hand every message of ``stream`` from ``start`` on to ``each``, with its offset;
    ``start`` is an offset or a time (read from just before it).

    Up to a marker published now (returns the offset after it: where the next read
    continues), or, with ``until``, up to that offset (returns it; nothing is
    published). None if the history could not be read that far.

    Deliveries come through fastconsume.py's path (no aio-pika object or task per
    message, batched acks): a storm's first read of a minute of history is
    thousands of messages, and a welcome waits for it.
    """
    offset: int | datetime = start if isinstance(start, int) else offset_of(start.ms)
    marker_id = None if until is not None else new_message_id()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Position | None] = loop.create_future()
    unacked = 0
    #: When the last delivery came (the read times out only when none comes).
    last = loop.time()
    #: Acks written in the background: all of them go out before the channel's close.
    acking: set[asyncio.Future[Any]] = set()

    def on_delivery(
        channel: aiormq.Channel, deliver: Basic.Deliver, header: ContentHeader, body: bytes
    ) -> None:
        nonlocal unacked, last
        if done.done():
            return
        last = loop.time()
        unacked += 1
        tag = deliver.delivery_tag
        if unacked >= prefetch // 4 and tag is not None:
            # Credit for the next deliveries. Each is awaited before the channel's close:
            # a method on a channel already closed costs the whole connection
            # ("CHANNEL_ERROR - expected 'channel.open'").
            unacked = 0
            fut = asyncio.ensure_future(
                channel.basic_ack(delivery_tag=tag, multiple=True, wait=False)
            )
            acking.add(fut)
            fut.add_done_callback(acking.discard)
        props = header.properties
        headers = props.headers or {}
        at = headers.get("x-stream-offset")
        if not isinstance(at, int):
            done.set_result(None)  # not a stream: nothing to continue from
            return
        if until is not None and at >= until:
            done.set_result(until)
            return
        if marker_id is not None and props.message_id == marker_id:
            done.set_result(at + 1)
            return
        try:
            env = message_to_envelope(body, props.message_id, headers)
        except (Marker, ValueError):
            return
        each(env, at)

    ch = await conn.channel(publisher_confirms=False)
    try:
        prefetch = PREFETCH if until is None else PREFETCH_UNTIL
        await ch.set_qos(prefetch_count=prefetch)
        channel = await ch.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        await fastconsume.consume(
            channel, stream, on_delivery, arguments={"x-stream-offset": offset}, counts=counts
        )
        if marker_id is not None:
            await exchange.publish(
                marker_message(marker_id), routing_key=MARKER_KEY, timeout=publish_timeout
            )
        # A long read that keeps going is not cut short: it fails only when nothing
        # came for ``timeout`` seconds.
        while True:
            idle = loop.time() - last
            if idle >= timeout:
                raise TimeoutError(f"nothing read for {idle:.1f}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout - idle):
                    nxt = await asyncio.shield(done)
                break
        if nxt is None:
            log.warning("history read: the stream gave no offset; the next read starts anew")
        return nxt
    except (TimeoutError, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as exc:
        where = offset if isinstance(offset, int) else offset.isoformat()
        log.warning("history read from %s failed: %r", where, exc)
        return None
    finally:
        # No ack after this (a timeout or a cancellation ended the read too): one sent
        # after the channel's Close costs the connection, as a second Close does.
        if not done.done():
            done.cancel()
        if acking:
            await asyncio.gather(*acking, return_exceptions=True)
        await close_channel(ch)


async def first_timestamp(
    conn: AbstractConnection, queue_name: str, timeout: float = 5.0
) -> int | None:
    """The publish time (ms) of the oldest message still in the stream, or None if the
    stream still holds everything ever published to it (its first offset is 0).

    Read only when a replay needs to know whether messages were dropped
    (replays.py). Raises if the stream cannot be read.
    """
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    ch = await conn.channel(publisher_confirms=False)
    try:
        await ch.set_qos(prefetch_count=1)
        queue = await ch.get_queue(queue_name, ensure=False)
        await queue.consume(inbox.put, no_ack=False, arguments={"x-stream-offset": "first"})
        async with asyncio.timeout(timeout):
            first = True
            while True:
                msg = await inbox.get()
                if first and (msg.headers or {}).get("x-stream-offset") == 0:
                    return None  # retention has dropped nothing yet
                first = False
                try:
                    return message_to_envelope(msg.body, msg.message_id, dict(msg.headers or {})).ts
                except (Marker, ValueError):
                    await msg.ack()
    finally:
        await close_channel(ch)
