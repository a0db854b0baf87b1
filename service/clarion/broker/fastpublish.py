"""Publishing a batch with confirms in one write: no task, timer or socket write per message.

aiormq's ``basic_publish`` costs a confirmed message a timeout context, a trip
through the channel lock, a queue entry for the connection's writer and a
socket write of its own; awaited in a task of its own per message
(``asyncio.gather``), that is most of the 160-180 µs aiormq spends per confirmed
publish (docs/performance.md, "The publish path, after"). Here a batch takes
the lock once, gets its delivery tags, has its frames (Basic.Publish, the
content header, the body in frames of at most ``frame_max``) marshalled into
one buffer that the connection's writer sends in one write, and is awaited
with one timer for the whole batch.

This reaches into aiormq's channel as ``basic_publish`` does, in one place
(as fastconsume.py does for consuming): under the channel's ``lock`` it counts
``delivery_tag`` on (the number the broker's confirms carry, so fast and
aiormq's own publishes on one channel stay in step), puts a future from
``create_future`` (the channel's future store: a close fails it as it fails
aiormq's own) into ``confirmations`` (resolved by aiormq's reader on Ack,
Nack, ``multiple`` acks, and on a Return found through
``message_id_delivery_tag``) and puts one ``ChannelFrame`` on ``write_queue``.
Like ``basic_publish`` it refuses a closed channel, and also one that is
closing; neither knows the broker's Channel.Flow (RabbitMQ pushes back on the
TCP connection instead). pyproject pins the aiormq versions this was written
against; where a version lacks these names, ``_supported`` says so and the
caller publishes each message through ``basic_publish`` (rabbitmq.py), logs a
warning and counts them as ``fallback`` (``clarion_broker_publish_total{path}``,
on the dashboard); tests/test_fast_publish.py fails then.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame, ConfirmationFrameType, DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

#: One message: its routing key, body and properties.
Message = tuple[str, bytes, Basic.Properties]
#: What a message's publish came to, as ``basic_publish`` returns or raises it: the Ack,
#: a Nack, the returned message (a channel without ``on_return_raises``), or the error.
Result = ConfirmationFrameType | DeliveredMessage | BaseException | None

#: What ``basic_publish`` must still do with these names for the fast path to do the same.
_PUBLISH_NAMES = ("delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue")


def _supported(channel: Any) -> bool:
    """aiormq's channel keeps its confirms as this module expects (names and types)."""
    publish = getattr(type(channel), "basic_publish", None)
    code = getattr(inspect.unwrap(publish), "__code__", None) if publish is not None else None
    return (
        isinstance(channel, aiormq.Channel)
        and code is not None
        and all(name in code.co_names for name in _PUBLISH_NAMES)
        and getattr(channel, "publisher_confirms", None) is True
        and type(getattr(channel, "delivery_tag", None)) is int
        and isinstance(getattr(channel, "confirmations", None), dict)
        and isinstance(getattr(channel, "message_id_delivery_tag", None), dict)
        and isinstance(getattr(channel, "write_queue", None), asyncio.Queue)
        and isinstance(getattr(channel, "max_content_size", None), int)
        and callable(getattr(channel, "create_future", None))
        and isinstance(getattr(type(channel), "lock", None), property)
        and callable(getattr(type(channel), "_on_confirm_frame", None))
        and callable(getattr(type(channel), "_on_return_frame", None))
    )


def _closing(channel: aiormq.Channel) -> bool:
    """The channel got (or sent) Channel.Close and waits for its end."""
    event = getattr(channel, "_Channel__close_event", None)
    return isinstance(event, asyncio.Event) and event.is_set()


def _body_frames(body: bytes, size: int) -> list[ContentBody]:
    """The body in frames of at most ``size`` bytes, as ``basic_publish`` splits it."""
    if not body:
        return []
    if len(body) < size:
        return [ContentBody(body)]
    return [ContentBody(body[i : i + size]) for i in range(0, len(body), size)]


async def publish(
    channel: aiormq.Channel, exchange: str, messages: Sequence[Message], timeout: float
) -> list[Result]:
    """Publish ``messages`` to ``exchange`` (mandatory), in one write; what each came to.

    Within ``timeout`` (seconds, for the batch): a message not confirmed by then is a
    TimeoutError, as one of ``basic_publish`` is. The channel must have publisher
    confirms on (``_supported``). Cancelled, it stops waiting for the confirms.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    results: list[Result] = [None] * len(messages)
    sending: list[int] = []
    for i, (key, _, _) in enumerate(messages):
        if len(key) > 255:
            results[i] = ValueError("Routing key too long (max 255 bytes)")
        else:
            sending.append(i)
    if not sending:
        return results
    futures: list[asyncio.Future[Any]] = []
    ids: list[tuple[str, int]] = []
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await _send(channel, exchange, messages, sending, futures, ids)
        except Exception as exc:  # closed (ChannelInvalidStateError), out of time, ...
            for i in sending:
                results[i] = exc
            return results
        # One waiter and one timer for the whole batch; what is not done by then is a
        # TimeoutError below.
        await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        known = channel.message_id_delivery_tag
        for message_id, tag in ids:
            if known.get(message_id) == tag:
                del known[message_id]
    for i, f in zip(sending, futures, strict=True):
        if not f.done():
            f.cancel()  # as basic_publish's timeout cancels its confirmation
            results[i] = TimeoutError()
        elif f.cancelled():
            results[i] = asyncio.CancelledError()
        else:
            error = f.exception()
            results[i] = error if error is not None else f.result()
    return results


async def _send(
    channel: aiormq.Channel,
    exchange: str,
    messages: Sequence[Message],
    sending: list[int],
    futures: list[asyncio.Future[Any]],
    ids: list[tuple[str, int]],
) -> None:
    """Number, register and queue the frames of ``messages[sending]`` as one write."""
    async with channel.lock:  # ChannelInvalidStateError if closed
        if _closing(channel):
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closing")
        confirmations = channel.confirmations
        known = channel.message_id_delivery_tag
        size = channel.max_content_size
        first = channel.delivery_tag + 1
        tag = first
        sent = False
        try:
            frames: list[Any] = []
            for i in sending:
                key, body, properties = messages[i]
                if not properties.message_id:
                    properties.message_id = uuid.uuid4().hex  # as basic_publish does
                future = channel.create_future()
                confirmations[tag] = future
                known[properties.message_id] = tag
                futures.append(future)
                ids.append((properties.message_id, tag))
                tag += 1
                frames.append(Basic.Publish(exchange=exchange, routing_key=key, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames += _body_frames(body, size)
            channel.delivery_tag = tag - 1
            await channel.write_queue.put(ChannelFrame.marshall(channel.number, frames))
            sent = True
        finally:
            if not sent:
                # The broker saw none of it: give the tags back while the lock is held.
                channel.delivery_tag = first - 1
                for t in range(first, tag):
                    confirmations.pop(t, None)
                for message_id, t in ids:
                    if known.get(message_id) == t:
                        del known[message_id]
                for f in futures:
                    f.cancel()
                ids.clear()
