"""RabbitMQ backend: one fanout exchange, one durable queue per pod.

The pod owns its reconnect loop (rather than aio-pika's robust connection) so
that readiness reflects exactly "connected and consuming", and so a publish
during an outage fails fast with BrokerUnavailable instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from ..names import EXCHANGE, HISTORY_QUEUE, QUEUE_PREFIX, queue_name
from ..protocol import Envelope, Target, id_timestamp_ms, new_message_id
from .base import Broker, BrokerUnavailable, Consumer, Replay, ReplayCollector, StateListener

log = logging.getLogger("clarion.broker")

HDR_KIND = "clarion-target"
HDR_NAME = "clarion-name"
#: A marker a replaying pod publishes to learn where "now" is in the history stream.
KIND_MARKER = "marker"
#: A catch-up reads history from this long before the pod lost contact.
CATCH_UP_MARGIN_MS = 2000


class _Marker(Exception):
    """Raised for a marker message: not a message for sockets."""


def envelope_to_message(env: Envelope) -> aio_pika.Message:
    headers: dict[str, Any] = {HDR_KIND: env.target.kind}
    if env.target.name is not None:
        headers[HDR_NAME] = env.target.name
    return aio_pika.Message(
        env.body,
        message_id=env.id,
        content_type="application/json",
        # Transient in the pod queues: confirms stay fast (docs/performance.md).
        # Durability lives in the history stream, from which a pod catches up
        # after every reconnect (RabbitBroker._catch_up).
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        headers=headers,
    )


def message_to_envelope(
    body: bytes, message_id: str | None, headers: dict[str, Any], redelivered: bool = False
) -> Envelope:
    kind = headers.get(HDR_KIND)
    name = headers.get(HDR_NAME)
    if isinstance(kind, bytes):
        kind = kind.decode()
    if isinstance(name, bytes):
        name = name.decode()
    if kind == KIND_MARKER:
        raise _Marker(message_id)
    if kind not in ("user", "channel", "broadcast"):
        raise ValueError(f"message without a valid {HDR_KIND} header")
    ts = 0
    if message_id:
        with contextlib.suppress(ValueError):
            ts = id_timestamp_ms(message_id)
    return Envelope(
        id=message_id or "",
        target=Target(kind, name),  # type: ignore[arg-type]
        ts=ts,
        body=body,
        redelivered=redelivered,
    )


class RabbitBroker(Broker):
    def __init__(
        self,
        url: str,
        pod_name: str,
        *,
        exchange: str = EXCHANGE,
        queue_prefix: str = QUEUE_PREFIX,
        prefetch: int = 1024,
        queue_max_length: int = 100_000,
        queue_message_ttl_ms: int = 300_000,
        queue_expires_ms: int = 1_800_000,
        publish_timeout: float = 5.0,
        reconnect_max_delay: float = 5.0,
        history: bool = True,
        history_max_age: str = "1h",
        history_max_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.url = url
        self.pod_name = pod_name
        self.exchange_name = exchange
        self.queue_name = queue_name(pod_name, queue_prefix)
        self.prefetch = prefetch
        self.queue_arguments: dict[str, Any] = {
            "x-max-length": queue_max_length,
            "x-overflow": "drop-head",
            "x-message-ttl": queue_message_ttl_ms,
            "x-expires": queue_expires_ms,
        }
        self.history = history
        self.history_arguments: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": history_max_age,
            "x-max-length-bytes": history_max_bytes,
        }
        self.publish_timeout = publish_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self._consumer: Consumer | None = None
        self._on_state: StateListener | None = None
        self._conn: AbstractConnection | None = None
        self._pub_exchange: AbstractExchange | None = None
        self._consuming = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._first_attempt = asyncio.Event()
        self._ack_raw_channel: Any = None
        self._ack_tag: int | None = None
        #: When the pod lost the broker (ms), and the ts of the last message consumed.
        self._lost_at: int | None = None
        self._last_consumed_ms: int | None = None
        self.catch_up_timeout = 30.0
        #: Called when a catch-up could not read history: sockets may have missed messages.
        self.on_gap: Callable[[], None] | None = None
        self._ack_scheduled = False

    @property
    def ready(self) -> bool:
        return self._consuming and self._conn is not None and not self._conn.is_closed

    async def start(self, consumer: Consumer, on_state: StateListener | None = None) -> None:
        self._consumer = consumer
        self._on_state = on_state
        self._task = asyncio.create_task(self._run(), name=f"broker-{self.pod_name}")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        delay = 0.2
        while not self._stopping:
            closed = asyncio.Event()
            try:
                conn = await aio_pika.connect(self.url, timeout=10)
                conn.close_callbacks.add(lambda *_, ev=closed: ev.set())
                self._conn = conn
                await self._setup(conn)
                delay = 0.2
                log.info("broker connected, consuming %s", self.queue_name)
                self._first_attempt.set()
                await closed.wait()
                log.warning("broker connection lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker connection failed: %s", exc)
            finally:
                was = self._consuming
                self._consuming = False
                self._pub_exchange = None
                self._ack_tag = None
                if was:
                    self._lost_at = int(time.time() * 1000)
                    self._set_state(False)
                if self._conn is not None and not self._conn.is_closed:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                self._first_attempt.set()
            if self._stopping:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_delay)

    def _set_state(self, up: bool) -> None:
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:  # pragma: no cover - listener bugs must not kill the loop
                log.exception("broker state listener failed")

    async def _setup(self, conn: AbstractConnection) -> None:
        pub = await conn.channel(publisher_confirms=True)
        exchange = await pub.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        sub = await conn.channel(publisher_confirms=False)
        await sub.set_qos(prefetch_count=self.prefetch)
        queue = await self._declare_queue(conn, sub)
        await queue.bind(self.exchange_name, routing_key="")
        if self.history:
            await self._declare_history(conn)
        self._pub_exchange = exchange
        # "Up" before the queue is consumed: the listener may act (e.g. close
        # sockets after a long outage) before anything buffered is delivered.
        await self._catch_up()
        self._consuming = True
        self._set_state(True)
        await queue.consume(self._on_message, no_ack=False)

    async def _declare_queue(self, conn: AbstractConnection, sub: AbstractChannel) -> AbstractQueue:
        try:
            return await sub.declare_queue(
                self.queue_name,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=self.queue_arguments,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # The queue exists with other arguments (an upgrade changed them):
            # use it as it is rather than fail; it is replaced when the pod is.
            log.warning(
                "queue %s exists with other arguments, using it as is: %s", self.queue_name, exc
            )
        again = await conn.channel(publisher_confirms=False)
        await again.set_qos(prefetch_count=self.prefetch)
        return await again.declare_queue(self.queue_name, passive=True)

    async def _declare_history(self, conn: AbstractConnection) -> None:
        """The stream every message also lands in, for ``since`` recovery."""
        ch = await conn.channel(publisher_confirms=False)
        try:
            for attempt in range(5):
                try:
                    history = await ch.declare_queue(
                        HISTORY_QUEUE, durable=True, arguments=self.history_arguments
                    )
                    await history.bind(self.exchange_name, routing_key="")
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

    async def replay(
        self, since: str, match: Callable[[Envelope], bool], timeout: float = 5.0
    ) -> Replay:
        """What a client missed since the message ``since``, from the history stream."""
        collector = ReplayCollector(since, match)
        ok = await self._read_history(id_timestamp_ms(since), collector.add, timeout)
        return collector.result() if ok else Replay([], complete=False)

    async def _read_history(
        self, since_ms: int, each: Callable[[Envelope], object], timeout: float
    ) -> bool:
        """Read the history stream from just before ``since_ms`` up to a fresh marker.

        The stream has no end-of-stream marker, so the pod publishes one (a tiny
        message all pods ignore): everything published before the read began
        is in the stream before it. Timestamps are per chunk with 1 s
        resolution, so the read starts a little early; callers skip by id.
        Returns False if the history could not be read to the marker.
        """
        conn = self._conn
        exchange = self._pub_exchange
        if not self.history or conn is None or conn.is_closed or exchange is None:
            return False
        start = datetime.fromtimestamp(max(0, since_ms / 1000 - 2), tz=UTC)
        marker_id = new_message_id()
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        ch = await conn.channel(publisher_confirms=False)
        try:
            await ch.set_qos(prefetch_count=500)
            queue = await ch.get_queue(HISTORY_QUEUE, ensure=False)
            tag = await queue.consume(inbox.put, no_ack=False, arguments={"x-stream-offset": start})
            marker = aio_pika.Message(b"", message_id=marker_id, headers={HDR_KIND: KIND_MARKER})
            await exchange.publish(marker, routing_key="", timeout=self.publish_timeout)
            read = 0
            async with asyncio.timeout(timeout):
                while True:
                    msg = await inbox.get()
                    read += 1
                    if inbox.empty() or read % 200 == 0:
                        await msg.ack(multiple=True)
                    if msg.message_id == marker_id:
                        break
                    try:
                        env = message_to_envelope(msg.body, msg.message_id, dict(msg.headers or {}))
                    except (_Marker, ValueError):
                        continue
                    each(env)
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            return True
        except (
            TimeoutError,
            aiormq.exceptions.AMQPError,
            aio_pika.exceptions.AMQPException,
        ) as exc:
            log.warning("history read from %s failed: %r", start.isoformat(), exc)
            return False
        finally:
            if not ch.is_closed:
                with contextlib.suppress(Exception):
                    await ch.close()

    async def _catch_up(self) -> None:
        """After a reconnect, deliver from history what the pod's queue may have lost.

        Pod-queue messages are transient (fast confirms): a broker restart, or a
        cut-off longer than the queue's TTL or length bound, loses what waited
        there. Every message is also in the durable history stream, so before
        consuming its queue again the pod reads the stream from shortly before
        it lost contact; the hub skips what it already delivered, by id.
        """
        if self._lost_at is None or self._consumer is None:
            return
        since = min(self._lost_at, self._last_consumed_ms or self._lost_at) - CATCH_UP_MARGIN_MS
        consumer = self._consumer
        caught = 0

        def deliver(env: Envelope) -> None:
            nonlocal caught
            if env.ts >= since:
                caught += 1
                consumer(env)

        ok = await self._read_history(since, deliver, self.catch_up_timeout)
        log.info("caught up %d messages from history after reconnecting (complete: %s)", caught, ok)
        if not ok and self.on_gap is not None:
            self.on_gap()
        self._lost_at = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            env = message_to_envelope(
                message.body,
                message.message_id,
                dict(message.headers or {}),
                bool(message.redelivered),
            )
        except _Marker:
            pass
        except Exception as exc:
            log.warning("dropping malformed broker message %s: %s", message.message_id, exc)
        else:
            assert self._consumer is not None
            self._last_consumed_ms = env.ts
            try:
                self._consumer(env)
            except Exception:
                log.exception("consumer failed on message %s", env.id)
        self._schedule_ack(message)

    def _schedule_ack(self, message: AbstractIncomingMessage) -> None:
        # Batch acks: everything delivered in one loop iteration is acked by
        # one basic.ack(multiple=True).
        self._ack_tag = message.delivery_tag
        self._ack_raw_channel = message.channel
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_ack)

    def _flush_ack(self) -> None:
        self._ack_scheduled = False
        tag, self._ack_tag = self._ack_tag, None
        channel = self._ack_raw_channel
        if tag is None or channel is None or channel.is_closed:
            return
        fut = asyncio.ensure_future(channel.basic_ack(delivery_tag=tag, multiple=True))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        exchange = self._pub_exchange
        if exchange is None or self._conn is None or self._conn.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        try:
            results = await asyncio.gather(
                *(
                    exchange.publish(
                        envelope_to_message(e), routing_key="", timeout=self.publish_timeout
                    )
                    for e in envelopes
                ),
                return_exceptions=True,
            )
        except Exception as exc:  # pragma: no cover
            raise BrokerUnavailable(str(exc)) from exc
        for r in results:
            if isinstance(r, BaseException):
                raise BrokerUnavailable(f"broker did not confirm: {r!r}") from r
