"""RabbitMQ backend: the connection loop, publishing with confirms, consuming the pod's queue.

The pod owns its reconnect loop (rather than aio-pika's robust connection) so
that readiness reflects exactly "connected and consuming", and so a publish
during an outage fails with BrokerUnavailable within its timeout instead of
hanging. ``--amqp-url`` may list several addresses (the nodes of a cluster):
the loop tries them in turn, moving to the next one after losing a connection,
and backs off only once all of them failed in a row (docs/broker-ha.md). The
parts live beside it: the topology (topology.py), reading history
(history.py), catching up after an outage (catchup.py), batched acks
(acks.py) and the message codec (codec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ..message import Envelope, Target
from ..names import history_queue, queue_name, routed_exchange
from . import fastconsume, fastpublish, history, topology
from .acks import AckBatcher
from .base import At, Broker, BrokerListener, BrokerOptions, BrokerUnavailable, Position
from .catchup import CatchUp
from .channels import close_channel
from .codec import Marker, envelope_properties, message_to_envelope
from .routing import Bindings, routing_key

log = logging.getLogger("clarion.broker")


#: A probe's wait that overran by more than this (s) means the pod's own loop was late.
LOOP_LAG = 0.5


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


def split_urls(url: str) -> list[str]:
    """The broker addresses in ``--amqp-url``: one URL, or several separated by commas."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ValueError("--amqp-url names no broker")
    return urls


def address_of(url: str) -> str:
    """``host:port`` of a broker URL: what the logs and metrics name (never the credentials)."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname}:{port}"


class RabbitBroker(Broker):
    def __init__(self, url: str, pod_name: str, options: BrokerOptions) -> None:
        self.urls = split_urls(url)
        self.pod_name = pod_name
        self.options = options
        self.queue_name = queue_name(pod_name, options.queue_prefix)
        self.history_queue = history_queue(options.exchange)
        #: ``host:port`` of the broker this pod is connected to ("" while it is not).
        self.address = ""
        self._listener: BrokerListener | None = None
        self._conn: AbstractConnection | None = None
        self._pub_exchange: AbstractExchange | None = None
        #: The default exchange on the same channel: straight to one pod's queue.
        self._pub_default: AbstractExchange | None = None
        #: The channel of both (publisher confirms on).
        self._pub_channel: AbstractChannel | None = None
        #: aiormq's channel under it, last checked for fastpublish.py, and the answer.
        self._pub_checked: tuple[aiormq.abc.AbstractChannel | None, bool] = (None, False)
        self._consuming = False
        self._up = asyncio.Event()
        #: When the pod lost a working connection (monotonic), until it has one again.
        self._lost_at: float | None = None
        #: Set to drop the current connection (with the reason in ``_why``).
        self._lost = asyncio.Event()
        self._why: list[str] = []
        self._probing = False
        self._probe_task: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._first_attempt = asyncio.Event()
        self._acks = AckBatcher()
        self._catch_up = CatchUp(
            options.catch_up_timeout, options.catch_up_give_up, late=options.publish_timeout
        )
        #: ``--routing direct``: the routing keys of this pod's queue (routing.py).
        self._bindings = (
            Bindings(
                self.queue_name,
                routed_exchange(options.exchange),
                linger=options.bind_linger,
                timeout=options.bind_timeout,
                on_confirmed=self._on_bound,
                on_error=self._on_bind_error,
                # Under a storm of binds, every message comes in meanwhile.
                wide=options.exchange,
            )
            if options.routing == "direct"
            else None
        )

    @property
    def ready(self) -> bool:
        return self._consuming and self._conn is not None and not self._conn.is_closed

    def route(self, target: Target, wanted: bool) -> None:
        if self._bindings is not None:
            key = routing_key(target)
            if wanted:
                self._bindings.add(key)
            else:
                self._bindings.discard(key)

    async def routed(self, target: Target) -> None:
        if self._bindings is not None:
            await self._bindings.wait([routing_key(target)])

    @property
    def bindings(self) -> int:
        return 0 if self._bindings is None else len(self._bindings)

    @property
    def routing_wide(self) -> bool:
        return self._bindings is not None and self._bindings.is_wide

    def _on_bound(self, seconds: float) -> None:
        if self._listener is not None:
            self._listener.on_bound(seconds)

    def _on_bind_error(self, keys: int) -> None:
        if self._listener is not None:
            self._listener.on_bind_error(keys)

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._task = asyncio.create_task(self._run(), name=f"broker-{self.pod_name}")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 1.0)  # a frozen node never answers
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        """Connect to the addresses in turn; back off once all of them failed in a row."""
        delay = 0.2
        index = 0
        failed_in_row = 0
        while not self._stopping:
            url = self.urls[index % len(self.urls)]
            index += 1
            lost = self._lost = asyncio.Event()
            why: list[str] = []
            self._why = why

            def on_close(
                _: object,
                exc: BaseException | None = None,
                ev: asyncio.Event = lost,
                why: list[str] = why,
            ) -> None:
                why.append(reason(exc))
                ev.set()

            def on_cancel(_: object, ev: asyncio.Event = lost, why: list[str] = why) -> None:
                # The pod's queue is gone (its node died): what it held is lost;
                # reconnect, declare it again and catch up from history.
                why.append(f"the broker cancelled the consumer of {self.queue_name}")
                ev.set()

            connected = False
            try:
                conn = await aio_pika.connect(
                    url,
                    timeout=self.options.connect_timeout,
                    # The management UI and rabbitmqctl show which pod this is.
                    client_properties={"connection_name": self.pod_name},
                    **self._heartbeat(url),
                )
                conn.close_callbacks.add(on_close)
                self._conn = conn
                async with asyncio.timeout(self.options.setup_timeout):
                    await self._setup(conn, on_cancel)
                connected = True
                delay = 0.2
                failed_in_row = 0
                self.address = address_of(url)
                down_for = None if self._lost_at is None else time.monotonic() - self._lost_at
                self._lost_at = None
                log.info(
                    "broker connected to %s, consuming %s%s",
                    self.address,
                    self.queue_name,
                    "" if down_for is None else f" ({down_for:.2f}s after losing the broker)",
                )
                self._report_connected(down_for)
                self._first_attempt.set()
                watch = asyncio.create_task(self._watch_queue(conn, lost, why))
                try:
                    await lost.wait()
                finally:
                    watch.cancel()
                if not self._stopping:
                    log.warning(
                        "broker connection to %s lost: %s",
                        self.address,
                        why[0] if why else "closed",
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed_in_row += 1
                log.warning("broker connection to %s failed: %s", address_of(url), reason(exc))
            finally:
                was = self._consuming
                self._consuming = False
                self._up.clear()
                self._pub_exchange = None
                self.address = ""
                self._acks.forget()
                if self._bindings is not None:
                    self._bindings.lost()
                if was:
                    self._lost_at = time.monotonic()
                    self._catch_up.lost()
                    self._set_state(False)
                if self._conn is not None and not self._conn.is_closed:
                    # A frozen node never answers the close.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._conn.close(), 1.0)
                self._first_attempt.set()
            if self._stopping:
                break
            if connected or failed_in_row % len(self.urls) == 0:
                # Lost a working connection, or every address failed: back off.
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.options.reconnect_max_delay)

    def _heartbeat(self, url: str) -> dict[str, Any]:
        """The heartbeat that detects a frozen node, unless the URL sets its own."""
        if "heartbeat" in parse_qs(urlsplit(url).query):
            return {}
        return {"heartbeat": self.options.heartbeat}

    def _report_connected(self, down_for: float | None) -> None:
        if self._listener is not None:
            try:
                self._listener.on_connected(self.address, down_for)
            except Exception:  # pragma: no cover - listener bugs must not kill the loop
                log.exception("broker state listener failed")

    def _set_state(self, up: bool) -> None:
        if self._listener is not None:
            try:
                self._listener.on_state(up)
            except Exception:  # pragma: no cover - listener bugs must not kill the loop
                log.exception("broker state listener failed")

    async def _setup(self, conn: AbstractConnection, on_cancel: Callable[[object], None]) -> None:
        o = self.options
        pub = await conn.channel(publisher_confirms=True)
        exchange = await topology.declare_exchange(pub, o)
        # The history stream first: a 202 stands on it, and right after a broker
        # restart it can still be down ("home node is down"), when a message routed
        # to it would be confirmed for the pod queues and silently not kept.
        await topology.declare_history(conn, o)
        # Publishing needs nothing more: it resumes now, while the pod's own queue
        # may still wait for the cluster to give up on a frozen node. What this
        # pod's sockets miss meanwhile, the catch-up below brings.
        self._pub_exchange = exchange
        self._pub_default = pub.default_exchange
        self._pub_channel = pub
        self._up.set()
        sub = await conn.channel(publisher_confirms=False)
        await sub.set_qos(prefetch_count=o.prefetch)
        queue = await topology.declare_pod_queue(conn, sub, self.queue_name, o)
        (await queue.channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(on_cancel)
        if self._bindings is not None:
            # Every key the sockets need, before anything is consumed.
            await self._bindings.restore(conn)
        assert self._listener is not None
        await self._catch_up.run(self.read_history, self._listener)
        # "Up" before the queue is consumed: the listener may act (e.g. close
        # sockets after a long outage) before anything buffered is delivered.
        self._consuming = True
        self._set_state(True)
        channel = await sub.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        await fastconsume.consume(channel, queue.name, self._on_message, counts=self.consume_counts)

    async def read_stream(
        self,
        start: Position | At,
        each: Callable[[Envelope, Position], object],
        timeout: float,
        until: Position | None = None,
    ) -> Position | None:
        conn, exchange = self._conn, self._pub_exchange
        if conn is None or conn.is_closed or exchange is None:
            return None
        return await history.read_stream(
            conn,
            exchange,
            self.history_queue,
            start,
            each,
            timeout,
            self.options.publish_timeout,
            until,
            self.consume_counts,
        )

    async def history_start(self) -> int | None:
        conn = self._conn
        if conn is None or conn.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        return await history.first_timestamp(conn, self.history_queue)

    def _on_message(
        self, channel: aiormq.Channel, delivery: Basic.Deliver, header: ContentHeader, body: bytes
    ) -> None:
        """One delivery from the pod's queue, called by aiormq's channel reader (fastconsume.py)."""
        props = header.properties
        try:
            env = message_to_envelope(body, props.message_id, props.headers or {})
        except Marker:
            pass
        except Exception as exc:
            log.warning("dropping malformed broker message %s: %s", props.message_id, exc)
        else:
            self._catch_up.consumed(env.ts)
            try:
                self._listener.on_message(env)  # type: ignore[union-attr]
            except Exception:
                log.exception("consumer failed on message %s", env.id)
        tag = delivery.delivery_tag
        assert tag is not None  # a delivery always has one
        self._acks.ack(channel, tag)

    async def publish(self, envelopes: Sequence[Envelope], to_pod: str | None = None) -> None:
        """Publish with confirms; 503 (BrokerUnavailable) unless every message was confirmed.

        With ``to_pod`` the messages go to that pod's queue alone, through the default
        exchange (replies: not in the history, not to the other pods).

        A message is confirmed once it is in the history stream (replicated:
        confirmed by a majority of its nodes) and in every pod queue it was
        routed to. Copies lost with a pod queue's node are caught up from the
        stream by that pod, which always notices the loss (module docstring
        of topology.py). During a failover the publish waits for the new
        connection, and a publish whose connection died before its confirm is
        sent again over the new one with the same message id (pods skip an id
        they already delivered): both within ``publish_timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.publish_timeout
        pending = list(envelopes)
        while True:
            exchange = await self._exchange(deadline)
            conn, channel = self._conn, self._pub_channel
            assert channel is not None
            # The same keys in both modes: the fanout exchange ignores them (routing.py).
            keys = [routing_key(e.target) for e in pending]
            if to_pod is not None:
                assert self._pub_default is not None
                exchange = self._pub_default
                keys = [queue_name(to_pod, self.options.queue_prefix)] * len(pending)
            # A confirm slow to come may mean this node is frozen: ask it.
            probe = loop.call_later(self.options.probe_after, self._probe_soon, conn)
            try:
                timeout = max(0.05, deadline - loop.time())
                results = await self._publish_once(channel, exchange.name, pending, keys, timeout)
            finally:
                probe.cancel()
            failed = [(e, r) for e, r in zip(pending, results, strict=True) if _failed(r)]
            if not failed:
                return
            retry = [e for e, r in failed if _may_resend(r)]
            if len(retry) < len(failed) or loop.time() >= deadline:
                r = next((r for _, r in failed if not _may_resend(r)), failed[0][1])
                stream = history_queue(self.options.exchange)
                why = (
                    f"routed nowhere: no queue took it, not even {stream}"
                    if isinstance(r, aiormq.abc.DeliveredMessage)
                    else f"the broker did not confirm: {r!r}"
                )
                log.info("publish refused: %s", why)
                raise BrokerUnavailable(why) from (r if isinstance(r, BaseException) else None)
            log.info("publish: %d not confirmed (%r), sending again", len(retry), failed[0][1])
            pending = retry
            await asyncio.sleep(0.05)

    async def _publish_once(
        self,
        channel: AbstractChannel,
        exchange: str,
        envelopes: list[Envelope],
        keys: list[str],
        timeout: float,
    ) -> Sequence[object]:
        """Each envelope's confirm (or error): the batch in one write through fastpublish.py,
        or, where the installed aiormq lacks what that needs, ``_publish`` for each."""
        if channel.is_closed:  # as _publish refuses each (not a path to count)
            closed = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            return [closed] * len(envelopes)
        counts = self.publish_counts
        underlay = await channel.get_underlay_channel()
        if self._fast_publish(underlay):
            assert isinstance(underlay, aiormq.Channel)
            if counts is not None:
                counts.fast += len(envelopes)
            messages = [
                (key, e.body, envelope_properties(e))
                for e, key in zip(envelopes, keys, strict=True)
            ]
            return await fastpublish.publish(underlay, exchange, messages, timeout)
        if counts is not None:
            counts.fallback += len(envelopes)
        return await asyncio.gather(
            *(
                _publish(channel, exchange, e, key, timeout)
                for e, key in zip(envelopes, keys, strict=True)
            ),
            return_exceptions=True,
        )

    def _fast_publish(self, underlay: aiormq.abc.AbstractChannel) -> bool:
        """Whether fastpublish.py can publish on this channel (checked once per channel)."""
        checked, fast = self._pub_checked
        if underlay is not checked:
            fast = fastpublish._supported(underlay)
            self._pub_checked = (underlay, fast)
            if not fast:
                log.warning(
                    "aiormq %s: publishing without the fast path",
                    importlib.metadata.version("aiormq"),
                )
        return fast

    async def _watch_queue(
        self, conn: AbstractConnection, lost: asyncio.Event, why: list[str]
    ) -> None:
        """Reconnect if the broker forgot the pod's queue while its consumer lives on.

        RabbitMQ (3.10) deletes a lost node's exclusive queues by name on every
        surviving node, from a list each node made a moment before: a pod that
        declared its queue again on another node in between loses the new
        queue's record and bindings, but not its consumer, so nothing tells it
        that nothing reaches it any more (tests/test_queue_watch.py). A passive
        declare every ``queue_check_interval`` seconds finds it; the reconnect
        declares and binds again and catches up from the history stream. Only
        the broker's "not found" counts: a slow answer is the probe's business.
        """
        interval = self.options.queue_check_interval
        channel: aio_pika.abc.AbstractChannel | None = None
        try:
            while not lost.is_set():
                await asyncio.sleep(interval)
                try:
                    # No timeout: a call aiormq cancels closes its channel (or frees its
                    # number before the broker has), and a dead node ends the connection.
                    if channel is None or channel.is_closed:
                        channel = await conn.channel()
                    await channel.declare_queue(self.queue_name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if conn is self._conn and not lost.is_set():
                        why.append(f"the broker no longer has the queue {self.queue_name}")
                        lost.set()
                    return
                except Exception as exc:  # slow or closing: the next round asks again
                    log.debug("queue check of %s: %s", self.queue_name, reason(exc))
                    channel = None
        finally:
            await close_channel(channel, wait=1.0)

    def _probe_soon(self, conn: AbstractConnection | None) -> None:
        if conn is not None and not self._probing:
            self._probing = True
            self._probe_task = asyncio.ensure_future(self._probe(conn))

    async def _probe(self, conn: AbstractConnection) -> None:
        """Drop the connection if its node is frozen: it answers nothing at all.

        Opening a channel is answered by the node the pod is connected to alone,
        so it is quick even while the cluster waits for another node. A node
        that is only busy (a reconnect storm's bindings) may answer slowly, but
        its heartbeats and confirms keep arriving: the connection is dropped
        only if the channel does not open *and* no frame at all came for
        ``probe_timeout`` seconds. Dropping a live connection costs far more
        than waiting (its exclusive queue, every binding, a catch-up), and
        under load it turned a slow broker into a cascade (issue 19).
        Heartbeats alone would find a frozen node too, after about three of them.

        Nor is the node judged while the pod itself is too busy to read (a
        connect storm on a saturated core): a wait that overran by more than
        ``LOOP_LAG`` seconds says the loop was late, and what the node sent
        meanwhile may still be unread.
        """
        loop = asyncio.get_running_loop()
        timeout = self.options.probe_timeout
        opening = asyncio.ensure_future(conn.channel(publisher_confirms=False))
        try:
            while True:
                began = loop.time()
                done, _ = await asyncio.wait({opening}, timeout=timeout)
                if done:
                    await close_channel(await opening)
                    return
                # Let the reader take what came while this waited, then look.
                await asyncio.sleep(0.05)
                late = loop.time() - began - timeout - 0.05
                underlay = getattr(conn, "transport", None)
                age = fastconsume.last_frame_age(getattr(underlay, "connection", None))
                if late > LOOP_LAG:
                    log.info("broker probe: this pod's loop was %.1fs late; looking again", late)
                    continue
                if age is None or age >= max(timeout, self.options.heartbeat):
                    raise TimeoutError(f"nothing received for {age or 0:.1f}s")
                log.info("broker slow to open a channel, but alive (a frame %.2fs ago)", age)
        except Exception as exc:
            if conn is self._conn and not conn.is_closed and not self._lost.is_set():
                self._why.append(f"no answer in {self.options.probe_timeout}s ({reason(exc)})")
                self._lost.set()
        finally:
            opening.cancel()
            self._probing = False

    async def _exchange(self, deadline: float) -> AbstractExchange:
        """The exchange to publish to; during a failover, wait for it until ``deadline``."""
        loop = asyncio.get_running_loop()
        exchange = self._pub_exchange
        if exchange is not None and self._conn is not None and not self._conn.is_closed:
            return exchange
        lost_at = self._lost_at
        failing_over = (
            lost_at is not None and time.monotonic() - lost_at < self.options.failover_window
        )
        if failing_over and deadline > loop.time():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await self._up.wait()
            exchange = self._pub_exchange
            if exchange is not None and self._conn is not None and not self._conn.is_closed:
                return exchange
        raise BrokerUnavailable("not connected to the broker")


async def _publish(
    channel: AbstractChannel, exchange: str, env: Envelope, key: str, timeout: float
) -> aiormq.abc.ConfirmationFrameType | None:
    """One publish, awaiting its confirm: what aio-pika's ``Exchange.publish`` does, without
    a ``Message`` per envelope and without waiting for the frame's write (the confirm
    comes after it anyway)."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)  # its basic_publish takes wait=
    return await underlay.basic_publish(
        env.body,
        exchange=exchange,
        routing_key=key,
        properties=envelope_properties(env),
        # Routed nowhere (not even to the history): refused, not dropped.
        mandatory=True,
        timeout=timeout,
        wait=False,
    )


def _failed(result: object) -> bool:
    """A confirm is an Ack frame. A nack is a failure, and so is a returned message: the
    pods' channel does not raise on returns (aio-pika's ``on_return_raises``), so aiormq
    resolves the confirm with the message the broker routed nowhere; a 202 for it would
    be a message nobody can read (tests/test_routed_nowhere.py)."""
    return isinstance(result, BaseException | aiormq.spec.Basic.Nack | aiormq.abc.DeliveredMessage)


def _may_resend(result: object) -> bool:
    """The broker did not take the message, and sending it again cannot duplicate it.

    Its channel or connection went away before the confirm, or the broker
    nacked it. The message may still have reached some queues; sent again with
    the same id, a pod that has it already skips it (the hub drops ids it
    delivered; a replay keeps one of each id). A timeout is not resent: the
    publish has used its time; nor is a message returned as unroutable.
    """
    if isinstance(result, aiormq.exceptions.PublishError):
        return False
    return isinstance(
        result,
        aiormq.exceptions.ChannelInvalidStateError
        | aiormq.exceptions.AMQPConnectionError
        | aiormq.exceptions.ChannelClosed
        | aiormq.exceptions.DeliveryError
        | aiormq.spec.Basic.Nack
        # The confirm's future is cancelled when its channel closes.
        | asyncio.CancelledError,
    )
