"""The connection hub: which sockets this pod holds, and fan-out to them.

Fan-out never awaits a client. ``Hub.deliver`` runs synchronously in the
broker consumer: it decodes a message once and appends the same string to the
bounded buffer of every matching connection. Each connection drains its own
buffer in its own writer task; one that falls too far behind is closed with
1013 and its pending messages are counted as dropped (``slow_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from websockets.protocol import State

from .metrics import Metrics
from .protocol import Envelope

log = logging.getLogger("clarion.hub")

#: Sends one ASGI message on the socket (Starlette's ``WebSocket.send``).
Send = Callable[[dict[str, Any]], Awaitable[None]]

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it.

    Built once per message per pod, then written as is to every matching
    socket (see ``Connection.push``).
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def raw_transport_of(send: Send) -> Any:
    """The uvicorn sans-I/O WebSocket protocol behind an ASGI ``send``, if that is what it is.

    Writing a pre-built frame straight to its transport skips encoding and
    framing the same message once per socket. Only this one implementation is
    recognised; anything else uses the ASGI ``send``.
    """
    proto = getattr(send, "__self__", None)
    if type(proto).__name__ != "WebSocketsSansIOProtocol":
        return None
    needed = ("transport", "writable", "close_sent", "disconnected", "handshake_complete", "conn")
    return proto if all(hasattr(proto, a) for a in needed) else None


class Connection:
    """One WebSocket held by this pod, with its bounded send buffer.

    Sending needs no task of its own: while nothing is in flight, a frame is
    written at once by stepping the ASGI ``send`` coroutine by hand, which on
    uvicorn completes without suspending whenever the transport is writable.
    Only when a send has to wait (the client reads slowly) does a writer task
    take over; frames pushed meanwhile wait in a bounded buffer it drains.
    """

    __slots__ = (
        "_buf",
        "_buf_bytes",
        "_closing",
        "_on_close",
        "_on_dirty",
        "_out",
        "_pending",
        "_raw",
        "_send",
        "_writer",
        "channels",
        "close_code",
        "close_reason",
        "id",
        "max_buffer_bytes",
        "max_buffer_messages",
        "metrics",
        "user",
    )

    def __init__(
        self,
        conn_id: str,
        user: str,
        send: Send,
        metrics: Metrics,
        max_buffer_messages: int = 1000,
        max_buffer_bytes: int = 4 * 1024 * 1024,
        raw: Any = None,
    ) -> None:
        self.id = conn_id
        self._raw = raw
        self.user = user
        self.channels: set[str] = set()
        self._send = send
        self.metrics = metrics
        self.max_buffer_messages = max_buffer_messages
        self.max_buffer_bytes = max_buffer_bytes
        # Created on first need: most sockets never have a backlog.
        self._buf: deque[tuple[str, int, int]] | None = None  # (text, nbytes, ts_ms or 0)
        self._buf_bytes = 0
        self._closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._writer: asyncio.Task[None] | None = None
        # While a history replay runs, live messages wait here: (id, text, nbytes, ts).
        self._pending: list[tuple[str, str, int, int]] | None = None
        #: Called once when the server closes this socket (the hub forgets it at once).
        self._on_close: Callable[[Connection], None] | None = None
        #: Fast-path frames waiting for the end of this event-loop iteration, and
        #: how the hub is told to flush them then: (frame, text, nbytes, ts).
        self._out: list[tuple[bytes, str, int, int]] | None = None
        self._on_dirty: Callable[[Connection], None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def pause(self) -> None:
        """Hold live messages back while a history replay is read."""
        if self._pending is None:
            self._pending = []

    def resume(self, replayed: list[tuple[str, str, int, int]]) -> None:
        """Send the replay, then the held live messages it did not already contain."""
        pending, self._pending = self._pending or [], None
        sent = set()
        for mid, text, nbytes, ts in replayed:
            sent.add(mid)
            if not self.push(text, nbytes, ts):
                return
        for mid, text, nbytes, ts in pending:
            if mid not in sent and not self.push(text, nbytes, ts):
                return

    def push_message(
        self, mid: str, text: str, nbytes: int, ts_ms: int, frame: bytes | None = None
    ) -> bool:
        """Queue a pushed message (held back while a replay runs)."""
        if self._pending is not None and not self._closing:
            if len(self._pending) >= self.max_buffer_messages:
                self._pending = []
                return self._overflow(1)
            self._pending.append((mid, text, nbytes, ts_ms))
            return True
        if frame is not None and self._raw_writable():
            # Fast path: the same pre-built frame bytes for every socket, and
            # every frame of one event-loop iteration in one write per socket.
            out = self._out
            if out is None:
                self._out = [(frame, text, nbytes, ts_ms)]
                if self._on_dirty is None:
                    self.flush_out()
                else:
                    self._on_dirty(self)
            else:
                out.append((frame, text, nbytes, ts_ms))
            return True
        return self.push(text, nbytes, ts_ms)

    def _raw_writable(self) -> bool:
        raw = self._raw
        return (
            raw is not None
            and self._writer is None
            and not self._closing
            and raw.handshake_complete
            and not raw.close_sent
            and not raw.disconnected
            and raw.writable.is_set()
            and raw.conn.state is State.OPEN
        )

    def flush_out(self) -> None:
        """Write the frames gathered by the fast path, joined into one write."""
        out, self._out = self._out, None
        if not out or self._closing:
            return
        if self._raw_writable():
            if len(out) == 1:
                self._raw.transport.write(out[0][0])
            else:
                self._raw.transport.write(b"".join([item[0] for item in out]))
            for item in out:
                self._sent(item[3])
            return
        # The socket changed state since: the ordinary path, in order.
        for _, text, nbytes, ts in out:
            if not self.push(text, nbytes, ts):
                return

    def push(self, text: str, nbytes: int, ts_ms: int = 0) -> bool:
        """Send or buffer a frame without waiting; False if closing or overflowed."""
        if self._closing:
            return False
        if self._out:
            self.flush_out()  # frames gathered earlier go first
            if self._closing:
                return False
        if self._writer is None:
            return self._send_now(text, ts_ms)
        buf = self._buf
        if buf is None:
            buf = self._buf = deque()
        # One message larger than the byte bound is still taken into an empty
        # buffer: only a backlog marks a slow client.
        if len(buf) >= self.max_buffer_messages or (
            buf and self._buf_bytes + nbytes > self.max_buffer_bytes
        ):
            return self._overflow(len(buf) + 1)
        buf.append((text, nbytes, ts_ms))
        self._buf_bytes += nbytes
        return True

    def _overflow(self, dropped: int) -> bool:
        self.metrics.dropped.labels(reason="slow_client").inc(dropped)
        self._buf = None
        self._buf_bytes = 0
        log.warning("conn=%s user=%s closed: send buffer full (slow client)", self.id, self.user)
        self.close(CLOSE_TRY_AGAIN, "slow consumer: send buffer full", reason="slow_client")
        return False

    def _sent(self, ts_ms: int) -> None:
        if ts_ms:
            self.metrics.delivered.inc()
            if ts_ms > 0:  # replayed messages (ts -1) would skew live latency
                self.metrics.latency.observe(max(0.0, time.time() - ts_ms / 1000.0))

    def _send_now(self, text: str, ts_ms: int) -> bool:
        coro: Any = self._send({"type": "websocket.send", "text": text})
        try:
            waiting = coro.send(None)
        except StopIteration:
            self._sent(ts_ms)
            return True
        except Exception as exc:
            # The socket is gone; its receive loop sees the disconnect.
            log.debug("conn=%s send failed: %s", self.id, exc)
            self._closing = True
            return False
        # The send has to wait (transport paused): a task finishes it and then
        # drains whatever is pushed meanwhile, in order.
        self._writer = asyncio.ensure_future(self._finish(coro, waiting, ts_ms))
        return True

    async def _finish(self, coro: Any, waiting: Any, ts_ms: int) -> None:
        try:
            while True:
                try:
                    if waiting is None:
                        await asyncio.sleep(0)
                    else:
                        # What a Task does with a yielded future: clear the
                        # flag the future set when the coroutine yielded it,
                        # then wait for it here instead.
                        waiting._asyncio_future_blocking = False
                        await waiting
                except asyncio.CancelledError:
                    coro.close()
                    raise
                except Exception:
                    pass  # the coroutine sees the same outcome when resumed
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    break
            self._sent(ts_ms)
            buf = self._buf
            while buf:
                text, nbytes, ts = buf.popleft()
                self._buf_bytes -= nbytes
                await self._send({"type": "websocket.send", "text": text})
                self._sent(ts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("conn=%s writer stopped: %s", self.id, exc)
            self._closing = True
        finally:
            self._writer = None

    def close(self, code: int, message: str, reason: str) -> None:
        """Close from the server side: stop writing, send a close frame."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        self._out = None
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        task = asyncio.ensure_future(self._send_close(code, message))
        task.add_done_callback(_consume_result)
        if self._on_close is not None:
            self._on_close(self)

    async def _send_close(self, code: int, message: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._send({"type": "websocket.close", "code": code, "reason": message}), 5.0
            )

    async def stop(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer


def _consume_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Hub:
    """Every connection of this pod, indexed by user and by channel."""

    def __init__(self, metrics: Metrics, pod_name: str) -> None:
        self.metrics = metrics
        self.pod_name = pod_name
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_channel: dict[str, set[Connection]] = {}
        self._ids = itertools.count(1)
        # Ids of recently consumed messages: a message the broker redelivers
        # (its ack was lost when the connection dropped) is not pushed twice.
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self.recent_limit = 50_000
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._prefix = f"{pod_name}-{int(time.time() * 1000) % 1_000_000:06d}-"

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.by_user.setdefault(conn.user, set()).add(conn)
        conn._on_close = self._closed_by_server
        conn._on_dirty = self._mark_dirty
        self.metrics.connections.set(len(self.connections))
        self.metrics.opened.inc()

    def _mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # Runs once per event-loop iteration in which messages were delivered:
        # every socket gets all of that iteration's frames in one write.
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush_out()

    def _closed_by_server(self, conn: Connection) -> None:
        # A socket we closed (slow, drained, shed, expired) stops counting now,
        # even if its client never completes the close handshake.
        self.remove(conn, conn.close_reason)

    def remove(self, conn: Connection, reason: str) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        users = self.by_user.get(conn.user)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[conn.user]
        for ch in list(conn.channels):
            self.unsubscribe(conn, ch)
        self.metrics.connections.set(len(self.connections))
        self.metrics.closed.labels(reason=conn.close_reason or reason).inc()

    def subscribe(self, conn: Connection, channel: str) -> bool:
        if channel in conn.channels:
            return False
        conn.channels.add(channel)
        self.by_channel.setdefault(channel, set()).add(conn)
        self.metrics.subscriptions.inc()
        return True

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        if channel not in conn.channels:
            return False
        conn.channels.discard(channel)
        subs = self.by_channel.get(channel)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.by_channel[channel]
        self.metrics.subscriptions.dec()
        return True

    def targets(self, env: Envelope) -> Iterable[Connection]:
        kind = env.target.kind
        if kind == "broadcast":
            return list(self.connections.values())
        index = self.by_user if kind == "user" else self.by_channel
        return list(index.get(env.target.name or "", ()))

    def deliver(self, env: Envelope) -> int:
        """Queue one consumed message for every matching local socket."""
        self.metrics.consumed.inc()
        # A broker redelivery, or a catch-up from history overlapping the queue.
        if env.id in self._recent:
            self.metrics.dropped.labels(reason="duplicate").inc()
            return 0
        self._remember(env.id)
        targets = self.targets(env)
        if not targets:
            return 0
        text = env.body.decode()
        nbytes = len(env.body)
        frame = text_frame(env.body)
        n = 0
        mid = env.id
        ts = env.ts
        for conn in targets:
            if conn.push_message(mid, text, nbytes, ts, frame):
                n += 1
        return n

    def _remember(self, mid: str) -> None:
        self._recent.add(mid)
        self._recent_order.append(mid)
        if len(self._recent_order) > self.recent_limit:
            self._recent.discard(self._recent_order.popleft())

    def close_all(self, code: int, message: str, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.close(code, message, reason)
