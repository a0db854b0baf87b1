"""The registry: which sockets this pod holds, by user and by channel, and fan-out to them.

``Hub.deliver`` runs synchronously in the broker consumer: it decodes a message
once into one ``Outgoing`` and hands it to every matching connection; each
connection's ``SocketWriter`` (writer.py) sends or buffers it without waiting.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from . import disconnects
from .disconnects import Disconnect
from .frames import Kind, Outgoing, text_frame
from .message import Envelope, Target
from .metrics import Metrics
from .writer import SocketWriter

log = logging.getLogger("clarion.hub")

#: A catch-up gives a socket what was published at most this long before it arrived:
#: message times come from the publishing pod's clock (NTP keeps pods within
#: milliseconds; a stray from before the socket is what a larger margin would cost).
SKEW_MS = 250
#: After a replay, a live copy of a replayed message can still come from the pod's queue
#: until messages this much newer than the replay's newest arrive.
REPLAY_OVERLAP_MS = 5000


class ConnectionState(enum.Enum):
    #: Live messages go straight to the writer.
    LIVE = "live"
    #: A history replay is being read: live messages are held back until it is sent.
    RECOVERING = "recovering"
    #: Closed by the server (or its socket is gone): nothing more is sent.
    CLOSED = "closed"


class Connection:
    """One WebSocket held by this pod: its identity, its subscriptions, its state."""

    __slots__ = (
        "_closed",
        "_held",
        "_on_close",
        "_replayed",
        "channels",
        "disconnect",
        "id",
        "opened_ms",
        "state",
        "user",
        "writer",
    )

    def __init__(self, conn_id: str, user: str, writer: SocketWriter) -> None:
        self.id = conn_id
        self.user = user
        #: When the socket arrived, and each channel's subscription began (unix ms).
        self.opened_ms = int(time.time() * 1000)
        self.channels: dict[str, int] = {}
        self.writer = writer
        self.state = ConnectionState.LIVE
        #: Why the server closed it (None while open, or when the client closed it).
        self.disconnect: Disconnect | None = None
        #: Live messages held back while a replay is read (RECOVERING only).
        self._held: list[Outgoing] = []
        #: Ids a replay sent that may still arrive live from the pod's queue (the read
        #: can finish before the queue delivers them), and the publish time past which
        #: none can: a live copy of one is dropped. None when there is none.
        self._replayed: tuple[set[str], int] | None = None
        #: Called once when the server closes this socket (the hub forgets it at once).
        self._on_close: Callable[[Connection], None] | None = None
        #: Resolved when the server closes the socket (only while someone waits for it).
        self._closed: asyncio.Future[None] | None = None
        writer.on_overflow = self._overflowed

    @property
    def closing(self) -> bool:
        return self.state is ConnectionState.CLOSED or self.writer.closed

    def hold(self) -> None:
        """Hold live messages back while a history replay is read."""
        if self.state is ConnectionState.LIVE:
            self.state = ConnectionState.RECOVERING

    def release(self, replayed: list[Outgoing]) -> None:
        """Send the replay, then the held live messages it did not already contain."""
        if self.state is not ConnectionState.RECOVERING:
            return
        held, self._held = self._held, []
        self.state = ConnectionState.LIVE
        sent: set[str] = set()
        for out in replayed:
            if out.id is not None:
                sent.add(out.id)
            if not self.writer.send(out):
                return
        if sent:
            self._replayed = (sent, max(o.ts for o in replayed) + REPLAY_OVERLAP_MS)
        for out in held:
            if out.id not in sent and not self.writer.send(out):
                return

    def deliver(self, out: Outgoing) -> bool:
        """A live message: written (or buffered), or held back while recovering."""
        if self._replayed is not None:
            ids, until = self._replayed
            if out.id in ids:
                ids.discard(out.id)  # the replay sent it already
                return True
            if out.ts > until or not ids:
                self._replayed = None
        if self.state is ConnectionState.RECOVERING:
            if len(self._held) >= self.writer.max_messages:
                self._held = []
                return self.writer.overflow(1)
            self._held.append(out)
            return True
        return self.writer.push(out)

    def send(self, out: Outgoing) -> bool:
        """A control frame (welcome, error, pong): never held back."""
        return self.writer.send(out)

    def on_closed(self) -> asyncio.Future[None]:
        """A future resolved when the server closes this socket (done already if it has)."""
        if self._closed is None or self._closed.done():
            self._closed = asyncio.get_running_loop().create_future()
            if self.state is ConnectionState.CLOSED:
                self._closed.set_result(None)
        return self._closed

    def _overflowed(self, dropped: int) -> None:
        log.warning("conn=%s user=%s closed: send buffer full (slow client)", self.id, self.user)
        self.close(disconnects.SLOW_CLIENT)

    def close(self, how: Disconnect) -> None:
        """Close from the server side: stop writing, send the close frame."""
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self.disconnect = how
        self._held = []
        self.writer.close(how.code, how.reason)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    async def stop(self) -> None:
        await self.writer.stop()


class Hub:
    """Every connection of this pod, indexed by user and by channel."""

    def __init__(self, metrics: Metrics, id_prefix: str) -> None:
        self.metrics = metrics
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_channel: dict[str, set[Connection]] = {}
        self._ids = itertools.count(1)
        # Ids of recently consumed messages: a message the broker redelivers
        # (its ack was lost when the connection dropped) is not pushed twice.
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self.recent_limit = 50_000
        self._dirty: list[SocketWriter] = []
        self._flush_handle: asyncio.Handle | None = None
        self._prefix = f"{id_prefix}-{int(time.time() * 1000) % 1_000_000:06d}-"
        #: Told of every socket added/removed (channel None) and (un)subscribed, after the
        #: indexes changed (occupancy.py derives the transitions from them).
        self.watch: Callable[[Connection, str | None, bool], None] | None = None
        #: Told when the first socket of a user or channel arrives (True) and the last
        #: leaves (False): the broker routes that target's messages here (routing.py).
        self.on_route: Callable[[Target, bool], None] | None = None

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        users = self.by_user.get(conn.user)
        if users is None:
            users = self.by_user[conn.user] = set()
            if self.on_route is not None:
                self.on_route(Target("user", conn.user), True)
        users.add(conn)
        conn._on_close = self._closed_by_server
        conn.writer.dirty = self._dirty
        self.metrics.connections.set(len(self.connections))
        self.metrics.opened.inc()
        if self.watch is not None:
            self.watch(conn, None, True)

    def _flush(self) -> None:
        # Runs once per event-loop iteration in which messages were delivered:
        # every socket gets all of that iteration's frames in one write. The list
        # is the writers' own (SocketWriter.dirty): emptied, never replaced.
        self._flush_handle = None
        dirty = self._dirty
        n = 0
        for writer in dirty:
            try:
                n += writer.flush()
            except Exception:  # pragma: no cover - a transport that failed; the others go on
                log.exception("flush failed")
                writer.closed = True
        dirty.clear()
        # Live frames written directly: counted once here, not per socket (metrics.Deliveries).
        self.metrics.deliveries.count += n

    def _closed_by_server(self, conn: Connection) -> None:
        # A socket we closed (slow, drained, shed, expired) stops counting now,
        # even if its client never completes the close handshake.
        self.remove(conn)

    def remove(self, conn: Connection, how: Disconnect = disconnects.CLIENT) -> None:
        """Forget a socket; ``how`` counts it unless the server closed it (then that counts)."""
        if self.connections.pop(conn.id, None) is None:
            return
        users = self.by_user.get(conn.user)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user]
                if self.on_route is not None:
                    self.on_route(Target("user", conn.user), False)
        for ch in list(conn.channels):
            self.unsubscribe(conn, ch)
        if self.watch is not None:
            self.watch(conn, None, False)
        self.metrics.connections.set(len(self.connections))
        self.metrics.closed.labels(reason=(conn.disconnect or how).label).inc()

    def subscribe(self, conn: Connection, channel: str) -> bool:
        if channel in conn.channels:
            return False
        conn.channels[channel] = int(time.time() * 1000)
        subs = self.by_channel.get(channel)
        if subs is None:
            subs = self.by_channel[channel] = set()
            if self.on_route is not None:
                self.on_route(Target("channel", channel), True)
        subs.add(conn)
        self.metrics.subscriptions.inc()
        if self.watch is not None:
            self.watch(conn, channel, True)
        return True

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        if channel not in conn.channels:
            return False
        del conn.channels[channel]
        subs = self.by_channel.get(channel)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.by_channel[channel]
                if self.on_route is not None:
                    self.on_route(Target("channel", channel), False)
        self.metrics.subscriptions.dec()
        if self.watch is not None:
            self.watch(conn, channel, False)
        return True

    def targets(self, env: Envelope) -> Iterable[Connection]:
        """The sockets a message is for: a copy (delivering may close some of them)."""
        target = env.target
        kind = target.kind
        if kind == "broadcast":
            return list(self.connections.values())
        conns = (self.by_user if kind == "user" else self.by_channel).get(target.name or "")
        return list(conns) if conns else ()

    def deliver(self, env: Envelope, caught_up: bool = False) -> int:
        """Queue one consumed message for every matching local socket.

        ``caught_up``: read from history after a reconnect (catchup.py), which
        starts before the last message consumed, possibly long before a socket
        arrived: such a socket gets only what was published after it arrived (or
        subscribed), less ``SKEW_MS`` for the publishing pod's clock, as if live.
        """
        self.metrics.consumed.value += 1
        # A broker redelivery, or a catch-up from history overlapping the queue.
        if env.id in self._recent:
            self.metrics.dropped.labels(reason="duplicate").inc()
            return 0
        self._remember(env.id)
        targets = self.targets(env)
        if caught_up and targets:
            targets = [c for c in targets if env.ts >= self._began(c, env) - SKEW_MS]
        if not targets:
            return 0
        body = env.body
        out = Outgoing(body.decode(), len(body), Kind.LIVE, env.id, env.ts, text_frame(body))
        n = 0
        live = ConnectionState.LIVE
        for conn in targets:
            # Connection.deliver's common case inline: no replay to dedupe against.
            if conn._replayed is None and conn.state is live:
                if conn.writer.push(out):
                    n += 1
            elif conn.deliver(out):
                n += 1
        if self._dirty and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        if n:
            # Once per message and pod, not per socket (metrics.Deliveries).
            self.metrics.deliveries.live(out.ts)
        return n

    @staticmethod
    def _began(conn: Connection, env: Envelope) -> int:
        if env.target.kind == "channel":
            return conn.channels.get(env.target.name or "", conn.opened_ms)
        return conn.opened_ms

    def first_time(self, mid: str) -> bool:
        """True the first time an id is seen (then it is remembered), False after."""
        if mid in self._recent:
            return False
        self._remember(mid)
        return True

    def _remember(self, mid: str) -> None:
        self._recent.add(mid)
        self._recent_order.append(mid)
        if len(self._recent_order) > self.recent_limit:
            self._recent.discard(self._recent_order.popleft())

    def close_all(self, how: Disconnect) -> None:
        for conn in list(self.connections.values()):
            conn.close(how)
