"""RabbitMQ backend: the connection loop, publishing with confirms, consuming the pod's queue.

The pod owns its reconnect loop (rather than aio-pika's robust connection) so
that readiness reflects exactly "connected and consuming", and so a publish
during an outage fails fast with BrokerUnavailable instead of hanging. The
parts live beside it: the topology (topology.py), reading history
(history.py), catching up after an outage (catchup.py), batched acks
(acks.py) and the message codec (codec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage

from ..names import queue_name
from ..protocol import Envelope, id_timestamp_ms
from . import history, topology
from .acks import AckBatcher
from .base import Broker, BrokerListener, BrokerOptions, BrokerUnavailable, Replay, ReplayCollector
from .catchup import CatchUp
from .codec import Marker, envelope_to_message, message_to_envelope

log = logging.getLogger("clarion.broker")


def reason(exc: BaseException | None) -> str:
    """What went wrong with the broker connection, in one line a person can act on."""
    if exc is None:
        return "closed"
    if isinstance(exc, aiormq.exceptions.ConnectionClosed) and len(exc.args) == 2:
        code, text = exc.args
        return f"{text} ({code})"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # aiormq drops the broker's reply text here; this is what it means.
        return (
            "the broker closed the connection during the handshake "
            "(the vhost does not exist, or this user may not use it)"
        )
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


class RabbitBroker(Broker):
    def __init__(self, url: str, pod_name: str, options: BrokerOptions) -> None:
        self.url = url
        self.pod_name = pod_name
        self.options = options
        self.queue_name = queue_name(pod_name, options.queue_prefix)
        self._listener: BrokerListener | None = None
        self._conn: AbstractConnection | None = None
        self._pub_exchange: AbstractExchange | None = None
        self._consuming = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._first_attempt = asyncio.Event()
        self._acks = AckBatcher()
        self._catch_up = CatchUp(options.catch_up_timeout)

    @property
    def ready(self) -> bool:
        return self._consuming and self._conn is not None and not self._conn.is_closed

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
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
            why: list[BaseException | None] = []

            def on_close(
                _: object,
                exc: BaseException | None = None,
                ev: asyncio.Event = closed,
                why: list[BaseException | None] = why,
            ) -> None:
                why.append(exc)
                ev.set()

            try:
                conn = await aio_pika.connect(
                    self.url,
                    timeout=10,
                    # The management UI and rabbitmqctl show which pod this is.
                    client_properties={"connection_name": self.pod_name},
                )
                conn.close_callbacks.add(on_close)
                self._conn = conn
                await self._setup(conn)
                delay = 0.2
                log.info("broker connected, consuming %s", self.queue_name)
                self._first_attempt.set()
                await closed.wait()
                if not self._stopping:
                    log.warning("broker connection lost: %s", reason(why[0] if why else None))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker connection failed: %s", reason(exc))
            finally:
                was = self._consuming
                self._consuming = False
                self._pub_exchange = None
                self._acks.forget()
                if was:
                    self._catch_up.lost()
                    self._set_state(False)
                if self._conn is not None and not self._conn.is_closed:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                self._first_attempt.set()
            if self._stopping:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.options.reconnect_max_delay)

    def _set_state(self, up: bool) -> None:
        if self._listener is not None:
            try:
                self._listener.on_state(up)
            except Exception:  # pragma: no cover - listener bugs must not kill the loop
                log.exception("broker state listener failed")

    async def _setup(self, conn: AbstractConnection) -> None:
        o = self.options
        pub = await conn.channel(publisher_confirms=True)
        exchange = await topology.declare_exchange(pub, o)
        sub = await conn.channel(publisher_confirms=False)
        await sub.set_qos(prefetch_count=o.prefetch)
        queue = await topology.declare_pod_queue(conn, sub, self.queue_name, o)
        await topology.declare_history(conn, o)
        self._pub_exchange = exchange
        assert self._listener is not None
        await self._catch_up.run(self._read_history, self._listener)
        # "Up" before the queue is consumed: the listener may act (e.g. close
        # sockets after a long outage) before anything buffered is delivered.
        self._consuming = True
        self._set_state(True)
        await queue.consume(self._on_message, no_ack=False)

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
        conn, exchange = self._conn, self._pub_exchange
        if conn is None or conn.is_closed or exchange is None:
            return False
        return await history.read_history(
            conn, exchange, since_ms, each, timeout, self.options.publish_timeout
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            env = message_to_envelope(message.body, message.message_id, dict(message.headers or {}))
        except Marker:
            pass
        except Exception as exc:
            log.warning("dropping malformed broker message %s: %s", message.message_id, exc)
        else:
            assert self._listener is not None
            self._catch_up.consumed(env.ts)
            try:
                self._listener.on_message(env)
            except Exception:
                log.exception("consumer failed on message %s", env.id)
        self._acks.ack(message)

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        exchange = self._pub_exchange
        if exchange is None or self._conn is None or self._conn.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        timeout = self.options.publish_timeout
        results = await asyncio.gather(
            *(
                exchange.publish(envelope_to_message(e), routing_key="", timeout=timeout)
                for e in envelopes
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise BrokerUnavailable(f"broker did not confirm: {r!r}") from r
