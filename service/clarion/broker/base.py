"""The broker seam: one small interface (after encode/broadcaster), two implementations.

A broker is started with one ``BrokerListener`` (the pod) and told its typed
``BrokerOptions``; it hands consumed messages to the listener, says when it
goes up or down, and says when the pod may have missed messages it could not
recover (a gap).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..message import Envelope, Target


class BrokerListener(Protocol):
    """What a broker tells the pod it serves."""

    def on_message(self, env: Envelope, caught_up: bool = False) -> object:
        """A message consumed from the pod's queue, or (``caught_up``) read from history
        after a reconnect. Must not block."""

    def on_state(self, up: bool) -> None:
        """Connected and consuming (True) or not (False).

        "Up" is reported right before the pod's queue is consumed again, so the
        listener can act before anything that waited in the queue is delivered.
        """

    def on_gap(self) -> None:
        """The pod may have missed messages it could not recover (history unreadable)."""

    def on_bound(self, seconds: float) -> None:
        """A routing key asked for ``seconds`` ago is bound (``--routing direct``)."""

    def on_bind_error(self, keys: int) -> None:
        """Binding or unbinding ``keys`` routing keys failed (they are tried again)."""

    def on_connected(self, address: str, reconnect_seconds: float | None) -> None:
        """Consuming again through ``address`` (host:port), ``reconnect_seconds`` after
        losing the broker (None on the first connection)."""


@dataclass(frozen=True)
class BrokerOptions:
    """The broker's part of the pod's settings, typed.

    The fields without a default are settings of the pod (``config.Settings``, where their
    defaults are written); the caller copies them (``gateway.broker_options``), so the
    broker knows nothing of the settings module."""

    exchange: str
    queue_prefix: str
    queue_max_length: int
    queue_message_ttl_ms: int
    queue_expires_ms: int
    history_max_age: str
    history_max_bytes: int
    #: ``exclusive``, ``classic`` or ``quorum`` (the pod's ``--pod-queue-type``).
    pod_queue_type: str
    #: ``fanout`` (every pod queue bound to the fanout exchange) or ``direct`` (routing.py).
    routing: str
    #: A routing key no longer needed is unbound after this long (a page reload keeps it).
    bind_linger: float = 2.0
    #: A socket waits this long for its binding before it is closed (1012).
    bind_timeout: float = 10.0
    prefetch: int = 1024
    publish_timeout: float = 5.0
    reconnect_max_delay: float = 5.0
    catch_up_timeout: float = 30.0
    #: A pod that cannot read the history after losing the broker keeps trying
    #: (unready) for this long, then reports a gap (its sockets close with 1012).
    catch_up_give_up: float = 60.0
    #: Seconds. The broker closes a connection that sent nothing for two of them: a pod
    #: whose loop a connect storm keeps busy for seconds lost its connection at 2 s
    #: (issue 19's 40,000-socket deploy); a frozen node is found by the probe.
    heartbeat: int = 5
    #: A frozen node accepts TCP connections and never answers the AMQP handshake.
    connect_timeout: float = 2.0
    #: A publish still unconfirmed after ``probe_after`` s makes the pod check that its
    #: node answers at all (opening a channel within ``probe_timeout`` s).
    probe_after: float = 1.0
    probe_timeout: float = 1.5
    #: Declaring, catching up and consuming again, on one connection.
    setup_timeout: float = 40.0
    #: For this long after losing the broker a publish waits for the new connection
    #: (within its timeout) instead of failing at once.
    failover_window: float = 15.0
    #: Seconds between checks that the broker still has the pod's queue (rabbitmq.py,
    #: ``_watch_queue``): one passive declare; a queue it forgot is declared again.
    queue_check_interval: float = 5.0


class PathCounts:
    """Messages per path of one of the broker's fast paths, read by the metrics at scrape
    time (plain ints on the hot path).

    ``fast``: the fast path (fastconsume.py: a delivery handed over in aiormq's channel
    reader, no object or task per delivery; fastpublish.py: a batch's frames in one write,
    its confirms awaited together); ``fallback``: aiormq's own per-message way, where the
    installed aiormq lacks what the fast path relies on.
    """

    __slots__ = ("fallback", "fast")

    def __init__(self) -> None:
        self.fast = 0
        self.fallback = 0


#: A place in the history stream: the offset of a message (where a read continues).
Position = int


@dataclass(frozen=True)
class At:
    """A place in the history stream by time: shortly before this publish time (ms)."""

    ms: int


class BrokerUnavailable(RuntimeError):
    """The broker cannot take or confirm a message right now (HTTP 503)."""


class BindTimeout(BrokerUnavailable):
    """The broker did not confirm a routing binding in time (routing.py)."""


class Broker(abc.ABC):
    """Fan-out transport shared by all pods.

    ``publish`` returns only once the broker has taken responsibility for every
    message (publisher confirms), else raises BrokerUnavailable. Consumed
    messages are handed to the consumer given to ``start``.
    """

    pod_name: str
    #: Where the broker counts its deliveries by consume path (None: not counted). The pod
    #: sets it to its metrics' counts; a broker with no consume paths leaves it alone.
    consume_counts: PathCounts | None = None
    #: The same for its publishes by path (None: not counted).
    publish_counts: PathCounts | None = None

    @abc.abstractmethod
    async def start(self, listener: BrokerListener) -> None:
        """Connect, declare the topology and consume this pod's queue.

        Returns once the first connection attempt finished; keeps reconnecting
        in the background until ``stop``.
        """

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, envelopes: Sequence[Envelope], to_pod: str | None = None) -> None:
        """To every pod and the history; with ``to_pod``, to that pod's queue alone (a reply)."""

    async def read_history(
        self, since_ms: int, each: Callable[[Envelope], object], timeout: float
    ) -> bool:
        """Hand every message from shortly before ``since_ms`` up to now to ``each``, in order.

        False if the history could not be read to its end (the catch-up and the
        history API skip by id what they already have).
        """
        nxt = await self.read_stream(At(since_ms), lambda env, _: each(env), timeout)
        return nxt is not None

    @abc.abstractmethod
    async def read_stream(
        self,
        start: Position | At,
        each: Callable[[Envelope, Position], object],
        timeout: float,
        until: Position | None = None,
    ) -> Position | None:
        """Hand every message from ``start`` up to now (or up to the position ``until``)
        to ``each`` with its position, in order.

        Returns where the next read continues (after the last message read), or
        None if the history could not be read to its end (replays.py).
        """

    @abc.abstractmethod
    async def history_start(self) -> int | None:
        """The publish time (ms) of the oldest message the history still holds, or None if it
        has dropped nothing (it holds everything ever published to it). Raises if unknown."""

    def route(self, target: Target, wanted: bool) -> None:  # noqa: B027 (optional)
        """The first socket of a user or channel arrived here (``wanted``), or the last left.

        A broker that delivers every message to every pod ignores it.
        """

    async def routed(self, target: Target) -> None:  # noqa: B027 (optional)
        """Returns once messages to ``target`` reach this pod (the broker confirmed it).

        Raises routing.BindTimeout if the broker does not confirm in time.
        """

    @property
    def bindings(self) -> int:
        """Routing keys bound to this pod's queue (0 where the broker does not route)."""
        return 0

    @property
    def routing_wide(self) -> bool:
        """The pod's queue takes every message while its keys are bound (routing.py)."""
        return False

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Connected and consuming this pod's queue."""
