"""Declaring what a pod needs on RabbitMQ: the fanout exchange, its queue, the history stream."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from ..names import HISTORY_QUEUE
from .base import BrokerOptions

log = logging.getLogger("clarion.broker")


def queue_arguments(o: BrokerOptions) -> dict[str, Any]:
    return {
        "x-max-length": o.queue_max_length,
        "x-overflow": "drop-head",
        "x-message-ttl": o.queue_message_ttl_ms,
        "x-expires": o.queue_expires_ms,
    }


def history_arguments(o: BrokerOptions) -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-age": o.history_max_age,
        "x-max-length-bytes": o.history_max_bytes,
    }


async def declare_exchange(channel: AbstractChannel, o: BrokerOptions) -> AbstractExchange:
    return await channel.declare_exchange(o.exchange, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_pod_queue(
    conn: AbstractConnection, channel: AbstractChannel, name: str, o: BrokerOptions
) -> AbstractQueue:
    """The pod's own queue, bound to the exchange: durable, non-exclusive, bounded."""
    try:
        queue = await channel.declare_queue(
            name, durable=True, exclusive=False, auto_delete=False, arguments=queue_arguments(o)
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # The queue exists with other arguments (an upgrade changed them): use
        # it as it is rather than fail; it is replaced when the pod is.
        log.warning("queue %s exists with other arguments, using it as is: %s", name, exc)
        channel = await conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=o.prefetch)
        queue = await channel.declare_queue(name, passive=True)
    await queue.bind(o.exchange, routing_key="")
    return queue


async def declare_history(conn: AbstractConnection, o: BrokerOptions) -> None:
    """The stream every message also lands in, for ``since`` recovery and catch-up."""
    ch = await conn.channel(publisher_confirms=False)
    try:
        for attempt in range(5):
            try:
                history = await ch.declare_queue(
                    HISTORY_QUEUE, durable=True, arguments=history_arguments(o)
                )
                await history.bind(o.exchange, routing_key="")
                return
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                log.warning(
                    "%s exists with other arguments, using it as is: %s", HISTORY_QUEUE, exc
                )
                return
            except aiormq.exceptions.AMQPError as exc:
                # Right after a broker restart a durable queue can briefly
                # answer "home node is down" (a 404): retry on a fresh channel.
                if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
                    "home node" not in str(exc)
                ):
                    raise
                log.info("declaring %s failed (%s), retrying", HISTORY_QUEUE, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
                if ch.is_closed:
                    ch = await conn.channel(publisher_confirms=False)
    finally:
        if not ch.is_closed:
            await ch.close()
