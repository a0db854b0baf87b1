"""Declaring what a pod needs on RabbitMQ: the fanout exchange, its queue, the history stream.

With ``--routing direct`` a direct exchange sits between the fanout exchange and
the pod queues, and each pod binds its queue to it by key (routing.py).

On a cluster of several nodes, what each piece does when a node dies:

- The history stream is replicated (``x-initial-cluster-size`` 3, or as many
  nodes as there are): a publish is confirmed once a majority of its replicas
  has it, and it survives any one node. It is the copy that makes a 202.
- A pod queue is by default an *exclusive* classic queue (``--pod-queue-type
  exclusive``): it lives on the node of the pod's connection and dies with
  that connection, so the pod always notices its loss; it declares the queue
  again over its new connection and catches up from the stream (catchup.py),
  as after any reconnect. RabbitMQ 4.3 refuses transient non-exclusive queues
  by default; ``classic`` keeps them for older brokers (the queue outlives a
  connection blip but dies with its node, and the broker cancels the
  consumer). A *durable* classic queue would instead stay on a dead node: it
  cannot be declared elsewhere ("home node is down") and copies routed to it
  are confirmed and dropped, which is why pod queues are not durable.
- ``--pod-queue-type quorum``: a replicated pod queue that loses nothing and is
  never cancelled, at the cost of Raft writes per pod per message (docs/broker-ha.md
  has the measured numbers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from ..names import history_queue, routed_exchange
from .base import BrokerOptions
from .channels import close_channel
from .routing import EVERYONE

log = logging.getLogger("clarion.broker")


#: Replicas of the history stream; a smaller cluster gets one per node.
HISTORY_REPLICAS = 3


def queue_arguments(o: BrokerOptions) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-max-length": o.queue_max_length,
        "x-overflow": "drop-head",
        "x-message-ttl": o.queue_message_ttl_ms,
        "x-expires": o.queue_expires_ms,
    }
    if o.pod_queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return args


def history_arguments(o: BrokerOptions) -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-age": o.history_max_age,
        "x-max-length-bytes": o.history_max_bytes,
        "x-initial-cluster-size": HISTORY_REPLICAS,
    }


async def declare_exchange(channel: AbstractChannel, o: BrokerOptions) -> AbstractExchange:
    """The fanout exchange every message is published to; with ``--routing direct`` also
    the direct exchange bound to it, which pod queues bind to (routing.py)."""
    exchange = await channel.declare_exchange(
        o.exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    if o.routing == "direct":
        routed = await channel.declare_exchange(
            routed_exchange(o.exchange), aio_pika.ExchangeType.DIRECT, durable=True
        )
        await routed.bind(exchange, routing_key="")
    return exchange


def pod_queue_source(o: BrokerOptions) -> str:
    """The exchange a pod queue is bound to: the fanout one, or the direct one."""
    return routed_exchange(o.exchange) if o.routing == "direct" else o.exchange


async def declare_pod_queue(
    conn: AbstractConnection, channel: AbstractChannel, name: str, o: BrokerOptions
) -> AbstractQueue:
    """The pod's own queue, bound to the exchange: bounded; exclusive, transient or quorum.

    An exclusive queue still held by the pod's previous connection (not yet
    noticed dead by the broker) is refused as locked: the reconnect loop retries.
    """
    try:
        queue = await channel.declare_queue(
            name,
            durable=o.pod_queue_type == "quorum",
            exclusive=o.pod_queue_type == "exclusive",
            auto_delete=False,
            arguments=queue_arguments(o),
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # The queue exists with other arguments (an upgrade changed them): use
        # it as it is rather than fail; it is replaced when the pod is.
        log.warning("queue %s exists with other arguments, using it as is: %s", name, exc)
        channel = await conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=o.prefetch)
        queue = await channel.declare_queue(name, passive=True)
    # Broadcasts and commands to every pod (the empty key; fanout ignores keys).
    await queue.bind(pod_queue_source(o), routing_key=EVERYONE)
    return queue


async def declare_history(conn: AbstractConnection, o: BrokerOptions) -> None:
    """The stream every message also lands in, for ``since`` recovery and catch-up."""
    stream = history_queue(o.exchange)
    ch = await conn.channel(publisher_confirms=False)
    try:
        for attempt in range(5):
            try:
                history = await ch.declare_queue(
                    stream, durable=True, arguments=history_arguments(o)
                )
                await history.bind(o.exchange, routing_key="")
                return
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                log.warning("%s exists with other arguments, using it as is: %s", stream, exc)
                ch = await conn.channel(publisher_confirms=False)
                history = await ch.declare_queue(stream, passive=True)
                await history.bind(o.exchange, routing_key="")
                return
            except aiormq.exceptions.AMQPError as exc:
                # Right after a broker restart a durable queue can briefly
                # answer "home node is down" (a 404): retry on a fresh channel.
                if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
                    "home node" not in str(exc)
                ):
                    raise
                log.info("declaring %s failed (%s), retrying", stream, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
                if ch.is_closed:
                    ch = await conn.channel(publisher_confirms=False)
        # Still down: no publish may be accepted without it; the connect loop retries.
        raise RuntimeError(f"the history stream {stream} is not available yet")
    finally:
        await close_channel(ch)
