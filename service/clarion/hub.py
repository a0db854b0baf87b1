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


class Connection:
    """One WebSocket held by this pod, with its bounded send buffer."""

    __slots__ = (
        "_buf",
        "_buf_bytes",
        "_closing",
        "_pending",
        "_send",
        "_wake",
        "_writer",
        "channels",
        "close_code",
        "close_reason",
        "id",
        "max_buffer_bytes",
        "max_buffer_messages",
        "metrics",
        "opened_at",
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
    ) -> None:
        self.id = conn_id
        self.user = user
        self.channels: set[str] = set()
        self._send = send
        self.metrics = metrics
        self.max_buffer_messages = max_buffer_messages
        self.max_buffer_bytes = max_buffer_bytes
        self._buf: deque[tuple[str, int, int]] = deque()  # (text, nbytes, ts_ms or 0)
        self._buf_bytes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._writer: asyncio.Task[None] | None = None
        # While a history replay runs, live messages wait here: (id, text, nbytes, ts).
        self._pending: list[tuple[str, str, int, int]] | None = None
        self.opened_at = time.monotonic()

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.id}")

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

    def push_message(self, mid: str, text: str, nbytes: int, ts_ms: int) -> bool:
        """Queue a pushed message (held back while a replay runs)."""
        if self._pending is not None and not self._closing:
            if len(self._pending) >= self.max_buffer_messages:
                self._pending = []
                return self.push(text, self.max_buffer_bytes + 1, ts_ms)  # overflow: close
            self._pending.append((mid, text, nbytes, ts_ms))
            return True
        return self.push(text, nbytes, ts_ms)

    def push(self, text: str, nbytes: int, ts_ms: int = 0) -> bool:
        """Queue a frame without waiting; False if the socket is closing or overflowed."""
        if self._closing:
            return False
        if (
            len(self._buf) >= self.max_buffer_messages
            or self._buf_bytes + nbytes > self.max_buffer_bytes
        ):
            self.metrics.dropped.labels(reason="slow_client").inc(len(self._buf) + 1)
            self._buf.clear()
            self._buf_bytes = 0
            log.warning(
                "conn=%s user=%s closed: send buffer full (slow client)", self.id, self.user
            )
            self.close(CLOSE_TRY_AGAIN, "slow consumer: send buffer full", reason="slow_client")
            return False
        self._buf.append((text, nbytes, ts_ms))
        self._buf_bytes += nbytes
        if len(self._buf) == 1:
            self._wake.set()
        return True

    def close(self, code: int, message: str, reason: str) -> None:
        """Close from the server side: stop writing, send a close frame."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        task = asyncio.ensure_future(self._send_close(code, message))
        task.add_done_callback(_consume_result)

    async def _send_close(self, code: int, message: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._send({"type": "websocket.close", "code": code, "reason": message}), 5.0
            )

    async def _write_loop(self) -> None:
        buf = self._buf
        metrics = self.metrics
        try:
            while True:
                if not buf:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                text, nbytes, ts_ms = buf.popleft()
                self._buf_bytes -= nbytes
                await self._send({"type": "websocket.send", "text": text})
                if ts_ms:
                    metrics.delivered.inc()
                    if ts_ms > 0:  # replayed messages (ts -1) would skew live latency
                        metrics.latency.observe(max(0.0, time.time() - ts_ms / 1000.0))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The socket went away under us; the receive loop sees the disconnect.
            log.debug("conn=%s writer stopped: %s", self.id, exc)

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer


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
        self._prefix = f"{pod_name}-{int(time.time() * 1000) % 1_000_000:06d}-"

    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.by_user.setdefault(conn.user, set()).add(conn)
        self.metrics.connections.set(len(self.connections))
        self.metrics.opened.inc()

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
        if env.redelivered and env.id in self._recent:
            self.metrics.dropped.labels(reason="duplicate").inc()
            return 0
        self._remember(env.id)
        targets = self.targets(env)
        if not targets:
            return 0
        text = env.body.decode()
        nbytes = len(env.body)
        n = 0
        mid = env.id
        for conn in targets:
            if conn.push_message(mid, text, nbytes, env.ts):
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
