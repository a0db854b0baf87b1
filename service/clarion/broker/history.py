"""Reading the history stream from a point in time up to "now".

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

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage

from ..protocol import Envelope, new_message_id
from .base import At, Position
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


async def read_stream(
    conn: AbstractConnection,
    exchange: AbstractExchange,
    stream: str,
    start: Position | At,
    each: Callable[[Envelope, int], object],
    timeout: float,
    publish_timeout: float,
) -> Position | None:
    """Hand every message of ``stream`` from ``start`` up to a marker to ``each``, with its
    offset; ``start`` is an offset or a time (read from just before it).

    Returns the offset after the marker (where the next read continues), or
    None if the history could not be read to the marker.
    """
    offset: int | datetime = start if isinstance(start, int) else offset_of(start.ms)
    marker_id = new_message_id()
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    ch = await conn.channel(publisher_confirms=False)
    try:
        await ch.set_qos(prefetch_count=500)
        queue = await ch.get_queue(stream, ensure=False)
        tag = await queue.consume(inbox.put, no_ack=False, arguments={"x-stream-offset": offset})
        await exchange.publish(
            marker_message(marker_id), routing_key=MARKER_KEY, timeout=publish_timeout
        )
        read = 0
        async with asyncio.timeout(timeout):
            while True:
                msg = await inbox.get()
                read += 1
                if inbox.empty() or read % 200 == 0:
                    await msg.ack(multiple=True)
                at = (msg.headers or {}).get("x-stream-offset")
                if msg.message_id == marker_id:
                    nxt = at + 1 if isinstance(at, int) else None
                    break
                try:
                    env = message_to_envelope(msg.body, msg.message_id, dict(msg.headers or {}))
                except (Marker, ValueError):
                    continue
                each(env, at if isinstance(at, int) else -1)
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        if nxt is None:
            log.warning("history read: the stream gave no offset; the next read starts anew")
        return nxt
    except (TimeoutError, aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException) as exc:
        where = offset if isinstance(offset, int) else offset.isoformat()
        log.warning("history read from %s failed: %r", where, exc)
        return None
    finally:
        if not ch.is_closed:
            with contextlib.suppress(Exception):
                await ch.close()


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
        if not ch.is_closed:
            with contextlib.suppress(Exception):
                await ch.close()
